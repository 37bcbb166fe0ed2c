"""The systemd unit passes `systemd-analyze verify` (which needs no running systemd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "heimdall.service"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "systemd"], check=True,
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is needed (Debian package systemd)"
    return found


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=/opt/heimdall/.venv/bin/heimdall serve" in text
    assert "UMask=0077" in text and "NoNewPrivileges=yes" in text
    # Point the unit at this checkout's interpreter so verify can check the executable.
    heimdall = Path(sys.executable).with_name("heimdall")
    unit = tmp_path / "heimdall.service"
    unit.write_text(text.replace("/opt/heimdall/.venv/bin/heimdall", str(heimdall)))
    proc = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    # verify exits 0 on some errors: the verdict is in stderr.
    problems = [line for line in proc.stderr.splitlines() if "heimdall.service" in line]
    assert proc.returncode == 0 and not problems, proc.stderr
