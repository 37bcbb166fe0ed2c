"""graph.postgres_dsn: a DSN that cannot be used is refused when the configuration loads
(exit 2, naming the key, never echoing the password); redaction never fails."""

from __future__ import annotations

import pytest

from heimdall_core import config
from heimdall_core.cli.main import main
from heimdall_core.errors import ConfigError, GraphError
from heimdall_core.graph.age import AgeStore
from heimdall_core.graph.rules import RuleSet
from heimdall_core.pgdsn import dsn_problem, redact_dsn

SECRET = "Pw-s3cret"  # the password the tests look for in every output

BAD = {
    "port out of range": f"postgresql://u:{SECRET}@127.0.0.1:99999/db",
    "port not a number": f"postgresql://u:{SECRET}@127.0.0.1:abc/db",
    "port zero": f"postgresql://u:{SECRET}@127.0.0.1:0/db",
    "unencoded @": f"postgresql://u:{SECRET}@x@127.0.0.1:5432/db",
    "unencoded /": f"postgresql://u:{SECRET}/x@127.0.0.1:5432/db",
    "libpq key=value": f"host=127.0.0.1 port=5432 user=u password={SECRET} dbname=db",
    "other scheme": f"mysql://u:{SECRET}@127.0.0.1/db",
    "broken IPv6": f"postgresql://u:{SECRET}@[::1/db",
}
GOOD = [
    "",
    f"postgresql://u:{SECRET}@127.0.0.1:5432/db",
    f"postgres://u:{SECRET.replace('-', '%40')}@db.example.org/heimdall?sslmode=require",
    "postgresql://u@[::1]:5432/db",
    "postgresql://u@h1:5432,h2:5433/db",
    f"postgresql:///db?host=/run/postgresql&password={SECRET}",
]


@pytest.mark.parametrize("dsn", BAD.values(), ids=BAD.keys())
def test_bad_dsn_is_refused_when_the_configuration_loads(dsn: str, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^graph\.postgres_dsn") as caught:
        config.load(None, {"HMD_GRAPH__POSTGRES_DSN": dsn})
    assert SECRET not in str(caught.value)
    monkeypatch.setenv("HMD_GRAPH__POSTGRES_DSN", dsn)
    monkeypatch.setenv("HMD_GRAPH__BACKEND", "age")
    assert main(["state-hash"]) == 2
    out, err = capsys.readouterr()
    assert "graph.postgres_dsn" in err and len(err.strip().splitlines()) == 1
    assert SECRET not in out + err and "Traceback" not in err


@pytest.mark.parametrize("dsn", GOOD)
def test_usable_dsn_is_accepted(dsn: str) -> None:
    assert dsn_problem(dsn) is None
    assert config.load(None, {"HMD_GRAPH__POSTGRES_DSN": dsn}).graph.postgres_dsn == dsn


@pytest.mark.parametrize("dsn", [*BAD.values(), *GOOD])
def test_redaction_never_fails_and_hides_the_password(dsn: str) -> None:
    assert SECRET not in redact_dsn(dsn)


@pytest.mark.parametrize("dsn", BAD.values(), ids=BAD.keys())
async def test_age_store_says_the_dsn_is_bad(dsn: str) -> None:
    """A DSN given to the store directly (not through the configuration): a DSN message,
    not "Apache AGE is not installed" nor a driver traceback."""
    store = AgeStore(RuleSet.default(), graph="nowhere", dsn=dsn)
    with pytest.raises(GraphError, match=r"graph\.postgres_dsn .*: ") as caught:
        await store.open()
    assert SECRET not in str(caught.value) and "not installed" not in str(caught.value)
