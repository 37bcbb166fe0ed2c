"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: the suite is deterministic by default (a fixed derivation of examples
# from each test's name), so a run's verdict never depends on luck. To hunt for new
# counterexamples with fresh random examples, many more of them, run
#   HYPOTHESIS_PROFILE=explore .venv/bin/pytest tests -k "propert or fuzz or mutat"
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=2000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

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
