"""Properties of every canonicalizer, with generated valid-ish inputs.

* Idempotence: canonicalizing the canonical value again gives the same
  result, ``canon(canon(x).value) == canon(x)``. The one documented exception
  is the ``mapped_from`` attribute of an IPv4-mapped IPv6 address: it records
  the input's form, so the second pass gives the same kind, value and display
  without it.
* Reasons never quote the input: values may be personal data.
"""

from __future__ import annotations

import ipaddress

from hypothesis import example, given, settings
from hypothesis import strategies as st

from heimdall_core.normalize import (
    DEFAULT,
    Canonical,
    NormalizeOptions,
    Rejected,
    Result,
    canonicalize,
)

EXAMPLES = 150
PROPERTY = settings(deadline=None, max_examples=EXAMPLES)

GMAIL = NormalizeOptions(
    email_fold_dots_domains=frozenset({"gmail.com"}),
    email_strip_plus_domains=frozenset({"gmail.com"}),
)
OPTIONS = st.sampled_from([NormalizeOptions(), GMAIL, NormalizeOptions(email_keep_local_case=True)])

_SPACE = st.sampled_from(["", " ", "\t", "\n "])
_LABEL_CHARS = "abcXYZ019-_" + "äßéØ食狮中\uff45" + "\u05d0\u0627" + "."
_LABEL = st.text(alphabet=_LABEL_CHARS, min_size=1, max_size=12)
_FULLWIDTH_COM = "\uff23\uff4f\uff4d"
_TLD = st.sampled_from(["com", "CO.UK", "de", "xn--p1ai", "рф", "github.io", "example", "1", _FULLWIDTH_COM])
HOSTS = st.builds(
    lambda labels, tld, dot: f"{'.'.join([*labels, tld])}{dot}",
    st.lists(_LABEL, min_size=0, max_size=3),
    _TLD,
    st.sampled_from(["", ".", "。"]),
)
DOMAINS = st.builds(lambda space, host: f"{space}{host}{space}", _SPACE, HOSTS)
_LOCAL = st.text(alphabet="abcXYZ019.+_-'{}!ÄéS\u0301 \"", min_size=0, max_size=20)
EMAILS = st.builds(lambda local, domain: f"{local}@{domain}", _LOCAL, DOMAINS | st.just("GMail.com"))


def _ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address, form: int) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return [str(address), f"::ffff:{address}", f"[::FFFF:{address}]", f" {address} "][form]
    return [address.compressed, address.exploded.upper(), f"[{address}]", f"{address}%eth0"][form]


IPS = st.builds(_ip_text, st.ip_addresses(), st.integers(0, 3)) | st.text(
    alphabet="0123456789abcdefx.:[]%", max_size=24
)
CIDRS = st.builds(
    lambda text, prefix: f"{text}/{prefix}", IPS, st.integers(0, 130) | st.just("08")
) | st.builds(
    lambda network: network.with_prefixlen,
    st.ip_addresses().flatmap(
        lambda a: st.integers(0, a.max_prefixlen).map(
            lambda p: ipaddress.ip_network(f"{a}/{p}", strict=False)
        )
    ),
)
_PATH = st.text(alphabet="abcAZ09-._~%2eE7fF/?#&=[]() \\ü@:", max_size=25)
URLS = st.builds(
    lambda scheme, userinfo, host, port, path: f"{scheme}://{userinfo}{host}{port}/{path}",
    st.sampled_from(["http", "HTTPS", "ftp", "ws", "wss", "hxxp", "file", "mailto"]),
    st.sampled_from(["", "user@", "u%41:p%2a@"]),
    HOSTS | IPS.map(lambda ip: f"[{ip}]" if ":" in ip and "[" not in ip else ip),
    st.sampled_from(["", ":80", ":443", ":8080", ":0"]),
    _PATH,
)
_HEX = "0123456789abcdefABCDEF"
HASHES = st.builds(
    lambda digits, space: f"{space}{digits}{space}",
    st.sampled_from([32, 40, 64, 128, 31]).flatmap(lambda n: st.text(alphabet=_HEX, min_size=n, max_size=n)),
    _SPACE,
) | st.sampled_from(
    [
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
        "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$aGFzaA",
        "{ssha}6kAEvjAvfE6aV4D+nZQDCDnbcWlOYUNsNHUhAA==",
        "sha1$Salt$E0980E3C00F304F6C36C2DED0C6ADE83C41704E3",
    ]
)
PHONES = st.from_regex(r"\s*\+?[0-9][0-9 ().\-]{3,20}", fullmatch=True) | st.text(
    alphabet="+0123456789 -().x", max_size=22
)
TEXT = st.text(max_size=40)

STRATEGIES: dict[str, st.SearchStrategy[str]] = {
    "email": EMAILS,
    "domain": DOMAINS,
    "ip": IPS,
    "cidr": CIDRS,
    "url": URLS,
    "hash": HASHES,
    "password_hash": HASHES,
    "phone": PHONES,
    "username": TEXT,
    "name": TEXT,
    "password": TEXT,
    "other": TEXT,
}


def _without_input_form(result: Canonical) -> Canonical:
    attrs = tuple(item for item in result.attrs if item[0] != "mapped_from")
    return result._replace(attrs=attrs)


def check_idempotent(kind: str, raw: str, opts: NormalizeOptions = DEFAULT) -> Result:
    first = canonicalize(kind, raw, opts)
    if isinstance(first, Canonical):
        second = canonicalize(first.kind, first.value, opts)
        assert second == _without_input_form(first), (raw, first, second)
        assert canonicalize(second.kind, second.value, opts) == second
        assert first.attrs == tuple(sorted(first.attrs))
    return first


def _checker(kind: str):  # type: ignore[no-untyped-def]
    @PROPERTY
    @given(STRATEGIES[kind])
    def check(raw: str) -> None:
        check_idempotent(kind, raw)

    return check


test_email_idempotent = _checker("email")
test_domain_idempotent = _checker("domain")
test_ip_idempotent = _checker("ip")
test_cidr_idempotent = _checker("cidr")
test_url_idempotent = _checker("url")
test_hash_idempotent = _checker("hash")
test_password_hash_idempotent = _checker("password_hash")
test_phone_idempotent = _checker("phone")
test_username_idempotent = _checker("username")
test_name_idempotent = _checker("name")
test_password_idempotent = _checker("password")
test_other_idempotent = _checker("other")


@PROPERTY
@given(EMAILS, OPTIONS)
# Found by this test: dot folding joined "s" to a combining accent, leaving non-NFC text.
@example("S.\u0301@GMail.com", GMAIL)
def test_email_idempotent_under_options(raw: str, opts: NormalizeOptions) -> None:
    check_idempotent("email", raw, opts)


def test_generators_reach_both_outcomes() -> None:
    """The strategies produce accepted and rejected values for the indicator kinds."""
    samples = {
        "email": ["a.b@example.com", "a..b@example.com"],
        "domain": ["example.com", "a..com"],
        "ip": ["192.0.2.1", "127.1"],
        "cidr": ["10.0.0.0/8", "10.0.0.1/8"],
        "url": ["http://example.com/", "file:///x"],
        "hash": ["a" * 32, "a" * 31],
    }
    for kind, (good, bad) in samples.items():
        assert isinstance(check_idempotent(kind, good), Canonical)
        assert isinstance(check_idempotent(kind, bad), Rejected)


# A token no reason text contains; embedded in inputs that will be rejected.
SENTINEL = "Qz7kVw"


@PROPERTY
@given(
    st.sampled_from(sorted(STRATEGIES)),
    st.text(alphabet="ab.@/:%$[]()", max_size=6),
    st.text(alphabet="ab.@/:%$[]()", max_size=6),
)
def test_reasons_never_quote_the_value(kind: str, prefix: str, suffix: str) -> None:
    raw = f"{prefix}{SENTINEL}{suffix}\x00"
    result = canonicalize(kind, raw)
    if isinstance(result, Rejected):
        assert SENTINEL.lower() not in result.reason.lower()
        assert ":" in result.reason
