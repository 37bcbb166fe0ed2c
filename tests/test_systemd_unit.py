"""The systemd unit passes `systemd-analyze verify` (which needs no running systemd), runs
commands this build has, and agrees with the installation docs/operations.md describes."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from heimdall_core import config
from heimdall_core.cli.common import EXIT_USAGE

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


INSTALL_SCRIPT = REPO / "scripts" / "install-service"
OPERATIONS = REPO / "docs" / "operations.md"
PROGRAM = "/opt/heimdall/.venv/bin/heimdall"


def _directives() -> list[tuple[str, str]]:
    """The unit's (key, value) lines, in order (a key may repeat, like Environment=)."""
    lines = [line.strip() for line in UNIT.read_text().splitlines()]
    return [(key, value) for key, _, value in (line.partition("=") for line in lines
                                                if line and not line.startswith(("#", ";", "[")))]


def _values(key: str) -> list[str]:
    return [value for name, value in _directives() if name == key]


def _environment() -> dict[str, str]:
    return dict(value.split("=", 1) for value in _values("Environment"))


def test_every_command_the_unit_runs_is_a_heimdall_command_with_those_flags() -> None:
    from heimdall_core.cli.main import build_parser

    commands = _values("ExecStartPre") + _values("ExecStart")
    assert len(commands) == 2
    for command in commands:
        argv = shlex.split(command.lstrip("-+!@:"))
        assert argv[0] == PROGRAM, command
        build_parser().parse_args(argv[1:])  # argparse exits (a test failure) on an unknown flag


def test_a_usage_or_configuration_error_is_not_restarted_in_a_loop() -> None:
    assert _values("Restart") == ["on-failure"]
    prevented = _values("RestartPreventExitStatus")
    assert prevented and str(EXIT_USAGE) in prevented[0].split()
    # serve stops within ~40 s: the stop timeout leaves it that, and a margin.
    assert _values("TimeoutStopSec") == ["60"]


def test_the_unit_matches_the_documented_installation() -> None:
    docs = OPERATIONS.read_text()
    script = INSTALL_SCRIPT.read_text()
    user = _values("User")[0]
    assert f"--shell /usr/sbin/nologin {user}" in docs and 'account=heimdall' in script
    assert f"python3 -m venv {PROGRAM.removesuffix('/bin/heimdall')}" in docs
    assert f"venv={PROGRAM.removesuffix('/bin/heimdall')}" in script
    env = _environment()
    assert f"cat > {env['HMD_CONFIG']} <<'EOF'" in docs and f"config_file={env['HMD_CONFIG']}" in script
    assert f"install -d -m 0700 -o {user} -g {user} {env['HMD_DATA_DIR']}" in docs
    # Every document the unit names is one the installation puts there.
    documents = _values("Documentation")[0].split()
    assert documents
    for url in documents:
        path = Path(url.removeprefix("file://"))
        assert str(path.parent) == "/usr/share/doc/heimdall", url
        source = "README.md" if path.name == "README.md" else f"docs/{path.name}"
        assert (REPO / source).is_file(), url
        assert f"install -m 0644 README.md docs/operations.md {path.parent}/" in docs
        assert 'install -m 0644 README.md docs/operations.md "$doc_dir/"' in script


def _documented_config(tmp_path: Path) -> Path:
    """The example heimdall.toml of docs/operations.md, as the install script extracts it."""
    text = subprocess.run([str(INSTALL_SCRIPT), "--print-config"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    path = tmp_path / "heimdall.toml"
    path.write_text(text)
    return path


def test_the_documented_configuration_loads(tmp_path: Path) -> None:
    path = _documented_config(tmp_path)
    settings = config.load(path, {})
    assert str(settings.data_dir) == _environment()["HMD_DATA_DIR"]
    assert settings.graph.backend == "sqlite" and settings.api.port == 8740


def test_the_units_start_command_with_the_documented_configuration(tmp_path: Path) -> None:
    """ExecStartPre as systemd runs it (the unit's environment, this checkout's program):
    it creates the site, succeeds again on the next start, and a missing configuration is
    exit 2, the status the unit does not restart on."""
    env = dict(os.environ, **_environment())
    env["HMD_CONFIG"] = str(_documented_config(tmp_path))
    env["HMD_DATA_DIR"] = str(tmp_path / "heimdall")
    argv = shlex.split(_values("ExecStartPre")[0])
    argv[0] = str(Path(sys.executable).with_name("heimdall"))
    for _ in range(2):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "heimdall" / "site.json").is_file()
    env["HMD_CONFIG"] = str(tmp_path / "missing.toml")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USAGE and "not found" in result.stderr


def test_the_install_script_is_valid_shell_and_refuses_a_stray_argument() -> None:
    subprocess.run(["bash", "-n", str(INSTALL_SCRIPT)], check=True)
    result = subprocess.run([str(INSTALL_SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr


VENDOR_UNITS = "/usr/lib/systemd/system"
ADMIN_UNITS = "/etc/systemd/system"


def _script_value(name: str) -> str:
    """A variable the install script sets on a line of its own (``name=value``)."""
    values = [line.partition("=")[2] for line in INSTALL_SCRIPT.read_text().splitlines()
              if line.startswith(f"{name}=")]
    assert len(values) == 1, (name, values)
    return values[0]


def _install_section() -> str:
    docs = OPERATIONS.read_text()
    return docs[docs.index("## Installing a site"):docs.index("## Running under systemd")]


def test_the_unit_is_installed_where_an_upgrade_keeps_local_settings() -> None:
    """The unit goes where vendor units go, so that rerunning the install (the documented
    upgrade) replaces it without touching the administrator's /etc/systemd/system, where
    local settings live as drop-ins (it overwrote a unit edited there)."""
    unit = _script_value("unit")
    assert unit == f"{VENDOR_UNITS}/heimdall.service"
    section = _install_section()
    assert f"install -m 0644 systemd/heimdall.service {unit}\n" in section
    assert f"systemd-analyze verify {unit}\n" in section
    assert 'install -m 0644 systemd/heimdall.service "$unit"' in INSTALL_SCRIPT.read_text()
    for text in (section, INSTALL_SCRIPT.read_text()):
        installs = [line for line in text.splitlines() if line.startswith("install ")]
        assert not [line for line in installs if ADMIN_UNITS in line], installs
    assert "systemctl edit heimdall" in section and f"{ADMIN_UNITS}/heimdall.service.d/" in section
    assert "systemctl edit heimdall" in UNIT.read_text()


def _retire_admin_unit(unit: Path, admin_unit: Path) -> subprocess.CompletedProcess[str]:
    """The script's retire_admin_unit, run on these paths (not as root, nothing installed)."""
    text = INSTALL_SCRIPT.read_text()
    start = text.index("settings_of() {")
    end = text.index("\n}\n", text.index("retire_admin_unit() {")) + 3
    program = f"unit={shlex.quote(str(unit))}\nadmin_unit={shlex.quote(str(admin_unit))}\n"
    return subprocess.run(["bash", "-euo", "pipefail", "-c", program + text[start:end] + "retire_admin_unit"],
                          capture_output=True, text=True, check=True, timeout=60)


def test_a_copy_of_the_unit_in_etc_is_removed_only_when_it_has_no_setting_of_its_own(
        tmp_path: Path) -> None:
    """Earlier versions installed the unit in /etc, where it hides the one an upgrade
    installs: moved aside (.replaced, which systemd does not load; its comments may be
    someone's notes) when only comments differ, kept (never lose an edit) with a warning
    that says what to do otherwise; a masked unit (a symlink) is left alone, unnamed."""
    unit, admin_unit = tmp_path / "vendor.service", tmp_path / "admin.service"
    unit.write_text(UNIT.read_text())
    admin_unit.write_text("# an older comment\n" + UNIT.read_text() + "\n")
    old = admin_unit.read_text()
    assert "moved" in _retire_admin_unit(unit, admin_unit).stdout
    assert not admin_unit.exists() and Path(f"{admin_unit}.replaced").read_text() == old
    admin_unit.write_text("# another note\n" + UNIT.read_text())  # retired again: the first is kept
    assert "moved" in _retire_admin_unit(unit, admin_unit).stdout
    assert Path(f"{admin_unit}.replaced").read_text() == old
    assert len(list(tmp_path.glob("admin.service.replaced.*"))) == 1
    edited = UNIT.read_text() + "Environment=HMD_API__PORT=9000\n"
    admin_unit.write_text(edited)
    result = _retire_admin_unit(unit, admin_unit)
    assert admin_unit.read_text() == edited
    assert "warning" in result.stderr and "systemctl edit heimdall" in result.stderr
    assert _retire_admin_unit(unit, tmp_path / "none.service").stderr == ""
    masked = tmp_path / "masked.service"
    masked.symlink_to("/dev/null")
    assert _retire_admin_unit(unit, masked).stderr == "" and masked.is_symlink()
