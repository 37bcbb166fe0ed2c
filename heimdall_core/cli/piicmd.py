"""`heimdall pii shred SUBJECT`, `heimdall pii rotate-kek`, `heimdall pii subject`."""

from __future__ import annotations

import argparse
import re
import sys

from heimdall_core import kinds
from heimdall_core.cli.common import EXIT_OK, Context, print_json
from heimdall_core.errors import FeedBusy, HeimdallError
from heimdall_core.events import encode_body
from heimdall_core.ingest.run import normalize_options
from heimdall_core.normalize import Canonical, canonicalize
from heimdall_core.pii.keystore import KeyStore
from heimdall_core.pii.policy import SUBJECT_KINDS as POLICY_SUBJECT_KINDS

SUBJECT_HEX_RE = re.compile(r"^[0-9a-f]{32}$")
SUBJECT_KINDS = POLICY_SUBJECT_KINDS

# A shred logs its event in the site's feed, whose one writer is the service while it
# runs: an erasure cannot wait for a dump upload, it needs the feed for a moment.
SHRED_WHILE_BUSY = ("nothing was shredded. To shred now: stop the service (systemctl stop "
                    "heimdall) or wait for that process to end, run this shred again, then start "
                    "the service again (docs/operations.md)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pii = sub.add_parser("pii", help="personal data: crypto-shredding and key rotation")
    pii_sub = pii.add_subparsers(dest="pii_command", required=True)

    shred = pii_sub.add_parser("shred", help="destroy a subject's data key (crypto-shredding)")
    shred.add_argument("subject", help="subject id (32 hex digits) or, with --kind, the person's value "
                       "('-': read it from stdin, out of shell history)")
    shred.add_argument("--kind", choices=SUBJECT_KINDS,
                       help="SUBJECT is a value of this kind (e.g. an email), not a subject id")
    shred.add_argument("--json", action="store_true")
    shred.set_defaults(func=cmd_shred)

    subject = pii_sub.add_parser("subject", help="show the subject id of a value (nothing changes)")
    subject.add_argument("value")
    subject.add_argument("--kind", choices=SUBJECT_KINDS, required=True)
    subject.set_defaults(func=cmd_subject)

    rotate = pii_sub.add_parser("rotate-kek", help="new key-encryption key; rewrap every data key")
    rotate.set_defaults(func=cmd_rotate)


def _subject(ctx: Context, keystore: KeyStore, text: str, kind: str | None) -> bytes:
    if kind is None:
        if not SUBJECT_HEX_RE.match(text.lower()):
            raise HeimdallError("SUBJECT must be a subject id of 32 hex digits; to name a person by "
                                "a value, add --kind (e.g. --kind email)")
        return bytes.fromhex(text.lower())
    result = canonicalize(kind, text, normalize_options(ctx.settings))
    if not isinstance(result, Canonical):
        raise HeimdallError(f"the {kind} value is not valid: {getattr(result, 'reason', 'rejected')}")
    return keystore.subject_id_for(result.kind, result.value)


def _argument(text: str) -> str:
    """``-`` reads the value from stdin (keeps personal data out of argv and shell history)."""
    if text != "-":
        return text
    value = sys.stdin.readline().strip()
    if not value:
        raise HeimdallError("expected the value on the first line of standard input")
    return value


def cmd_shred(ctx: Context) -> int:
    # Take the feed first: if another process writes it, fail before destroying anything,
    # so a shred is never left without its shredding event.
    with ctx.store() as store:
        try:
            writer = store.writer()
        except FeedBusy as exc:
            raise exc.advise(SHRED_WHILE_BUSY) from None
        with KeyStore.open(ctx.data_dir / "pii", create=True) as keystore:
            subject = _subject(ctx, keystore, _argument(ctx.args.subject), ctx.args.kind)
            existed = keystore.shred(subject)
        ack = writer.append_bodies([encode_body(*kinds.SUBJECT_SHREDDED, {"subject": subject})])
    if ctx.args.json:
        print_json({"subject": subject.hex(), "key_existed": existed, "event_seq": ack.first_seq})
    else:
        state = "its data key was destroyed" if existed else "it had no data key yet; it is now " \
            "marked shredded, so none will ever be made"
        print(f"subject {subject.hex()}: {state}; shredding event appended at sequence {ack.first_seq}")
    return EXIT_OK


def cmd_subject(ctx: Context) -> int:
    with KeyStore.open(ctx.data_dir / "pii", create=True) as keystore:
        subject = _subject(ctx, keystore, _argument(ctx.args.value), ctx.args.kind)
        shredded = keystore.is_shredded(subject)
    print(f"{subject.hex()}{'  (shredded)' if shredded else ''}")
    return EXIT_OK


def cmd_rotate(ctx: Context) -> int:
    with KeyStore.open(ctx.data_dir / "pii", create=True) as keystore:
        version = keystore.rotate_kek()
    print(f"key-encryption key is now version {version}; every data key was rewrapped and older "
          "versions destroyed (the log is unchanged)")
    return EXIT_OK
