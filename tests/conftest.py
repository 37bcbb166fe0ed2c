"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Published test data lives beside the repository (../shared/testdata), in CI too.
TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata_dir() -> Path:
    assert TESTDATA.is_dir(), f"published test data not found at {TESTDATA}"
    return TESTDATA


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL + Apache AGE for the whole session (tests/pgfixture.py); the DSN holds
    a password: never print it."""
    from pgfixture import ensure_postgres_age, stop_postgres_age

    dsn = ensure_postgres_age()
    yield dsn
    stop_postgres_age()
