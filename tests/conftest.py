"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Published test data lives beside the repository (../shared/testdata), in CI too.
TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata_dir() -> Path:
    assert TESTDATA.is_dir(), f"published test data not found at {TESTDATA}"
    return TESTDATA
