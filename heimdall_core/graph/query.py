"""What analysts ask of the graph about one value (shared by the CLI and the HTTP API).

``heimdall query VALUE`` and ``GET /v1/indicators/{kind}/{value}`` both call
:func:`query_value`, which returns one JSON-ready answer:

* the value is canonicalized exactly as ingest does (kind detected unless given);
* it is looked up in both forms it may be stored in: clear, and by blind index (personal
  kinds, with the site's PII index key), so a value is found whatever the PII policy was
  when it was ingested;
* per match: where it was seen (dumps with source and name, records, first/last seen),
  what it shares records with (top values by shared records), what is known about it
  (enrichment facts, derived attributes);
* personal co-values are shown as "protected" unless the caller asks to reveal them
  (decrypted with the key store); values whose every subject was shredded show as
  "shredded", and a shredded queried value answers only that.

A value not found is either :class:`NotSeen` (HTTP 404) or, when the site's PII policy
keeps its kind out of every searchable form (``drop``, or ``encrypt`` without a blind
index), :class:`NotSearchable` (HTTP 422): "not seen" would be a false negative there.
Both carry the JSON body the HTTP API and ``heimdall query --json`` give.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from heimdall_core.errors import HeimdallError, KeyMaterialError, NotFound, PiiError, QueryError
from heimdall_core.graph import model
from heimdall_core.graph.model import CoValue, DumpSeen, ValueDumps, ValueInfo
from heimdall_core.graph.rules import FACT_PREFIX, RuleSet
from heimdall_core.graph.store import CO_VALUES_DEFAULT, DUMP_SIGHTINGS_SCANNED_MAX, GraphStore
from heimdall_core.normalize import KINDS, Canonical, NormalizeOptions, canonicalize, detect_kind
from heimdall_core.normalize.model import DEFAULT
from heimdall_core.pii.blind_index import IndexKeys, blind_index
from heimdall_core.pii.keystore import KeyStore
from heimdall_core.pii.policy import Action, PiiPolicy
from heimdall_core.pii.protect import DataKeyReader, reveal

CO_VALUES_MAX = 1_000
PROTECTED = "[protected]"
SHREDDED = "[shredded]"
FINGERPRINT_ONLY = "[fingerprint only]"
DEFAULT_POLICY = PiiPolicy.default()

_UNSEARCHABLE = {Action.DROP: "not stored", Action.ENCRYPT: "no blind index"}
"""Actions that leave no form of a value to look up (sealed copies are not joinable), and why."""


class Unanswered(HeimdallError):
    """A well-formed question this site has no answer to; :attr:`body` is the JSON that
    says so (HTTP :attr:`status`, and ``heimdall query --json``)."""

    status: ClassVar[int]

    def __init__(self, message: str, query: Mapping[str, str], **extra: str) -> None:
        super().__init__(message)
        self.query = dict(query)
        self.extra = extra

    @property
    def body(self) -> dict[str, Any]:
        return {"error": str(self), "status": self.status, "query": self.query, **self.extra}


class NotSeen(Unanswered, NotFound):
    """Never seen in any dump or enrichment this graph holds."""

    status = 404


class NotSearchable(Unanswered):
    """The PII policy keeps values of this kind in no form a query can find."""

    status = 422


@dataclass(frozen=True, slots=True)
class QueryKeys:
    """What the PII key store lends a query: index keys to find personal values, and
    (only when revealing) the data keys to decrypt them."""

    index: IndexKeys | None
    data: DataKeyReader | None = None


def open_keystore(data_dir: Path) -> KeyStore | None:
    """The site's PII key store, or None when the site never stored personal data."""
    directory = data_dir / "pii"
    if not directory.exists():
        return None
    return KeyStore.open(directory, create=False)


def asked(kind: str, value: str, policy: PiiPolicy) -> dict[str, str]:
    """What a reply says was asked: the value only for a kind the site keeps in clear
    (an unknown kind's value may be anything, personal data included)."""
    if kind in KINDS and policy.kind_action(kind) is Action.CLEAR:
        return {"kind": kind, "value": value}
    return {"kind": kind}


def parse_query(raw: str, kind: str | None, options: NormalizeOptions = DEFAULT) -> Canonical:
    """Kind (given or detected) and canonical value, as ingest would compute them."""
    _check_utf8(raw)
    if kind is not None and kind not in KINDS:
        raise QueryError(f"unknown kind {kind!r}; use one of: {', '.join(sorted(KINDS))}")
    if kind is None:
        kind = detect_kind(raw)
        if kind is None:
            raise QueryError("cannot tell what kind of value this is; say it with --kind "
                             f"(one of: {', '.join(sorted(KINDS))})")
    result = canonicalize(kind, raw, options)
    if not isinstance(result, Canonical):
        raise QueryError(f"not a valid {kind}: {result.reason}")
    return result


def _check_utf8(raw: str) -> None:
    """A command-line argument that is not UTF-8 arrives with its bad bytes as lone
    surrogates (PEP 383); every canonicalizer and value id encodes it as UTF-8."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("the value is not valid UTF-8") from None


def candidate_ids(canonical: Canonical, index_keys: IndexKeys | None) -> list[tuple[str, bytes]]:
    """(form, value id) for each form the value may be stored in."""
    out = [("clear", model.clear_value_vid(canonical.kind, canonical.value))]
    if index_keys is not None:
        bi = blind_index(index_keys, canonical.kind, canonical.value)
        out.append(("blind_index", model.blind_value_vid(canonical.kind, bi)))
    return out


async def query_value(store: GraphStore, rules: RuleSet, raw: str, *, kind: str | None = None,
                      keys: QueryKeys | None = None, reveal_values: bool = False,
                      co_values: int = CO_VALUES_DEFAULT,
                      options: NormalizeOptions = DEFAULT,
                      policy: PiiPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """The answer about one value; :class:`QueryError` for a bad question, :class:`NotSeen`
    when the value was never seen, :class:`NotSearchable` when ``policy`` (the site's)
    keeps values of its kind unsearchable."""
    if not 1 <= co_values <= CO_VALUES_MAX:
        raise QueryError(f"co-occurring values to list must be 1..{CO_VALUES_MAX}")
    if reveal_values and (keys is None or keys.data is None):
        raise QueryError("revealing personal values needs the site's PII key store")
    canonical = parse_query(raw, kind, options)
    keys = keys or QueryKeys(None)
    forms = candidate_ids(canonical, keys.index)
    found = await store.values([vid for _, vid in forms])
    matches = []
    for form, vid in forms:
        info = found.get(vid)
        if info is not None:
            matches.append(await _match(store, rules, form, info, keys, reveal_values, co_values))
    if not matches:
        raise _not_found(canonical, policy)
    asked_for = {"kind": canonical.kind, "value": canonical.value}
    if canonical.display:
        asked_for["display"] = canonical.display
    return {"query": asked_for, "matches": matches}


def display_form(kind: str, value: str | None) -> str | None:
    """The form for people (U-labels) of an internationalized domain, e-mail or URL held
    in its canonical A-label form; None for any other value. Canonicalizing is idempotent,
    so this is the ``display`` ingest computed and did not store."""
    if value is None or "xn--" not in value:
        return None
    result = canonicalize(kind, value)
    return result.display if isinstance(result, Canonical) else None


def _not_found(canonical: Canonical, policy: PiiPolicy) -> Unanswered:
    """Why nothing was found. Looked up first all the same: a value ingested while the
    policy still indexed its kind is found whatever the policy says now."""
    kind = canonical.kind
    action = policy.kind_action(kind)
    query = asked(kind, canonical.value, policy)
    why = _UNSEARCHABLE.get(action)
    if why is not None:
        return NotSearchable(f"{kind} values are not searchable on this site: "
                             f"pii.policy.{policy.kind_key(kind)} is "
                             f"{action.value!r} ({why})", query, policy=action.value)
    return NotSeen(f"{kind} value not seen in any dump or enrichment", query)


async def _match(store: GraphStore, rules: RuleSet, form: str, info: ValueInfo, keys: QueryKeys,
                 reveal_values: bool, co_values: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"id": info.vid.hex(), "kind": info.kind, "form": form}
    if info.is_shredded:
        answer["status"] = "shredded"
        return answer
    props = rules.visible_props(model.VALUE, info.props)
    dumps = await store.value_dumps(info.vid, sightings_max=DUMP_SIGHTINGS_SCANNED_MAX)
    # A repeat upload (the same bytes from the same source, found to be one only at its
    # end) is listed, marked, but is not new evidence: its records are not counted again.
    first_seen, last_seen = _seen_span(props, dumps, info.sightings)
    answer.update({
        "status": "seen",
        "sightings": info.sightings - dumps.sightings_in_repeats,
        "sightings_in_repeats": dumps.sightings_in_repeats,
        "first_seen_ms": first_seen,
        "last_seen_ms": last_seen,
        "attrs": props.get("attrs") or {},
        "facts": {name[len(FACT_PREFIX):]: value for name, value in props.items()
                  if name.startswith(FACT_PREFIX)},
        "enriched_by": props.get("enriched_by") or [],
        "dumps": [_dump(d) for d in dumps.items],
        "dumps_total": dumps.total,
        # Listed every dump of every sighting (a value in more records than
        # DUMP_SIGHTINGS_SCANNED_MAX has its dumps counted over the newest of them).
        "dumps_complete": dumps.covers(info.sightings),
        "dumps_sightings_scanned": dumps.sightings_scanned,
    })
    co = await store.co_values(info.vid, co_values, skip_dumps=dumps.repeats)
    answer["co_occurring"] = {
        "values": [_co_value(c, keys, reveal_values) for c in co.items],
        "sightings_scanned": co.sightings_scanned,
        "complete": co.complete,
    }
    return answer


def _seen_span(props: Mapping[str, Any], dumps: ValueDumps, sightings: int) -> tuple[Any, Any]:
    """First and last seen, leaving out repeat uploads as the counts do: a repeat is the
    same records again, not a later sighting. From the per-dump spans when every dump of
    every sighting was read, else the value's own (which include repeats)."""
    evidence = [d for d in dumps.items if d.duplicate_of is None]
    if not dumps.repeats or not dumps.covers(sightings) or not evidence:
        return props.get("first_seen_ms"), props.get("last_seen_ms")
    return min(d.first_seen_ms for d in evidence), max(d.last_seen_ms for d in evidence)


def _dump(seen: DumpSeen) -> dict[str, Any]:
    return {"dump": seen.dump.hex(), "source": seen.source, "name": seen.name,
            "sightings": seen.sightings, "first_seen_ms": seen.first_seen_ms,
            "last_seen_ms": seen.last_seen_ms,
            "duplicate_of": None if seen.duplicate_of is None else seen.duplicate_of.hex()}


def _co_value(co: CoValue, keys: QueryKeys, reveal_values: bool) -> dict[str, Any]:
    info = co.value
    out: dict[str, Any] = {"id": info.vid.hex(), "kind": info.kind, "records": co.records,
                           "value": info.value, "protected": info.is_protected,
                           "shredded": info.is_shredded}
    if info.is_protected and reveal_values and not info.is_shredded:
        out["value"] = _reveal(info, keys.data)
    display = display_form(info.kind, out["value"]) if info.kind in KINDS else None
    if display is not None:
        out["display"] = display
    return out


def _reveal(info: ValueInfo, data_keys: DataKeyReader | None) -> str | None:
    """Decrypt a personal value from any of its sealed copies whose subject is alive."""
    if data_keys is None:
        return None
    for subject, ct in info.seals:
        if subject in info.shredded_subjects:
            continue
        try:
            return reveal({"kind": info.kind, "sub": subject, "ct": ct}, data_keys)
        except (PiiError, KeyMaterialError):
            continue  # shredded since, or a subject this site holds no key for
    return None


# --- text rendering --------------------------------------------------------------------------


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _shown(value: Mapping[str, Any]) -> str:
    if value.get("shredded"):
        return SHREDDED
    if value.get("value") is not None:
        return str(value["value"]) + (f" ({value['display']})" if value.get("display") else "")
    return PROTECTED if value.get("protected") else FINGERPRINT_ONLY


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines


def _dumps_listed(match: Mapping[str, Any]) -> str:
    """What the "where seen" table leaves out, if anything."""
    if match["dumps_complete"]:
        return ""
    notes = []
    if len(match["dumps"]) < match["dumps_total"]:
        notes.append(f"showing {len(match['dumps']):,} of {match['dumps_total']:,} dumps")
    scanned = match["dumps_sightings_scanned"]
    if scanned < match["sightings"] + match["sightings_in_repeats"]:
        notes.append(f"counted over the latest {_records(scanned)}")
    return f" ({'; '.join(notes)})"


def render_text(answer: Mapping[str, Any]) -> str:
    """The human-readable form of an answer (``heimdall query`` without ``--json``)."""
    query = answer["query"]
    lines = [f"{query['kind']} {query['value']}" + (f" ({query['display']})" if query.get("display") else "")]
    for match in answer["matches"]:
        lines.append("")
        lines.append(f"as {match['form'].replace('_', ' ')} value {match['id'][:16]}…")
        if match["status"] == "shredded":
            lines.append("  shredded: the data of every person it belonged to was erased")
            continue
        repeats = match["sightings_in_repeats"]
        lines.append(f"  seen in {_records(match['sightings'])}"
                     + (f" (and {repeats} more in repeated uploads)" if repeats else "")
                     + f", first {_when(match['first_seen_ms'])}, last {_when(match['last_seen_ms'])}")
        listed = _dumps_listed(match)
        lines += ["", f"where seen{listed}"]
        lines += ["  " + line for line in _table(
            ["dump", "source", "name", "records", "first seen", "last seen"],
            [[d["dump"][:16], str(d["source"] or "-"), _dump_name(d), str(d["sightings"]),
              _when(d["first_seen_ms"]), _when(d["last_seen_ms"])] for d in match["dumps"]])]
        co = match["co_occurring"]
        scanned = "" if co["complete"] else f" (from the latest {_records(co['sightings_scanned'])})"
        lines += ["", f"seen with{scanned}"]
        lines += ["  " + line for line in _table(
            ["kind", "value", "shared records"],
            [[v["kind"], _shown(v), str(v["records"])] for v in co["values"]])]
        known = {**{f"attr {k}": v for k, v in match["attrs"].items()}, **match["facts"]}
        if known:
            lines += ["", "what is known" + (f" (from {', '.join(match['enriched_by'])})"
                                             if match["enriched_by"] else "")]
            lines += ["  " + line for line in _table(
                ["fact", "value"], [[k, _fact(v)] for k, v in sorted(known.items())])]
    return "\n".join(lines)


def _dump_name(dump: Mapping[str, Any]) -> str:
    name = str(dump["name"] or "-")
    repeat_of = dump.get("duplicate_of")
    return name if repeat_of is None else f"{name} (repeat of {repeat_of[:16]}…)"


def _fact(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _records(count: int) -> str:
    return "1 record" if count == 1 else f"{count} records"
