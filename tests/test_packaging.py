"""A wheel carries everything an installed Heimdall needs outside the Python modules.

The PostgreSQL + AGE migrations live in ``sql/`` at the top of the checkout (not inside a
package), so a wheel installs them under ``<prefix>/share/heimdall/sql``; the AGE store
looks there when no checkout is beside the code.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from heimdall_core.errors import GraphError
from heimdall_core.graph import age

ROOT = Path(__file__).resolve().parent.parent
WHEEL_BUILD_TIMEOUT_S = 300


@pytest.mark.slow
def test_the_wheel_carries_migrations_samples_and_type_marker(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, timeout=WHEEL_BUILD_TIMEOUT_S, capture_output=True)
    (wheel,) = tmp_path.glob("heimdall-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for migration in sorted((ROOT / "sql").glob("*.sql")):
            (inside,) = [n for n in names if n.endswith(f".data/data/share/heimdall/sql/{migration.name}")]
            assert archive.read(inside) == migration.read_bytes()
        assert "heimdall_core/samples/sample-dump.csv" in names
        assert {"heimdall_core/py.typed", "heimdall_sync/py.typed"} <= names


def test_migrations_are_found_where_a_wheel_installs_them(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "share" / "heimdall" / "sql"
    installed.mkdir(parents=True)
    for migration in (ROOT / "sql").glob("*.sql"):
        (installed / migration.name).write_bytes(migration.read_bytes())
    monkeypatch.setattr(age, "SQL_DIR_CHECKOUT", tmp_path / "no-checkout")
    monkeypatch.setattr(age, "SQL_DIR_INSTALLED", installed)
    assert age.load_migrations() == age.load_migrations(ROOT / "sql")


def test_a_missing_schema_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(age, "SQL_DIR_CHECKOUT", tmp_path / "a")
    monkeypatch.setattr(age, "SQL_DIR_INSTALLED", tmp_path / "b")
    with pytest.raises(GraphError, match=r"sql/\*\.sql\) is missing from this installation"):
        age.load_migrations()
