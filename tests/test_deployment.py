"""The deployment guide and what it ships: every unit verifies, every command in the guide runs or names real files."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "deployment.md"
UNITS = ROOT / "deploy" / "systemd"
SHIPPED_VENV = "/opt/hubbridge/.venv"
SHIPPED_ENV_FILE = "/etc/hubbridge/hubbridge.env"
LANES = ("delivery", "sync")


def guide_commands() -> list[list[str]]:
    """Each `$ ...` line of the guide's console blocks, split as a shell would."""
    blocks = re.findall(r"```console\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return [shlex.split(line[2:]) for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(path)
    return parser


def shipped_units() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def test_the_guide_ships_a_worker_per_lane_two_beats_and_the_api_on_loopback() -> None:
    names = {p.name for p in shipped_units()}
    assert {"hubbridge-worker@.service", "hubbridge-beat.service", "hubbridge-api.service",
            "hubbridge-migrate.service"} <= names
    worker = unit(UNITS / "hubbridge-worker@.service")["Service"]["ExecStart"]
    assert worker.endswith("worker --lane %i")
    api = unit(UNITS / "hubbridge-api.service")["Service"]["ExecStart"]
    assert "--host 127.0.0.1" in api
    text = GUIDE.read_text()
    assert "exactly 2 in all" in text and "hubbridge-worker@delivery" in text and "hubbridge-worker@sync" in text
    assert (ROOT / "deploy" / "nginx" / "hubbridge.conf").read_text().count("proxy_pass http://127.0.0.1:8080") == 1


@pytest.mark.parametrize("path", shipped_units(), ids=lambda p: p.name)
def test_each_unit_runs_a_real_hubbridge_command(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["EnvironmentFile"] == SHIPPED_ENV_FILE
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == f"{SHIPPED_VENV}/bin/hubbridge"
    for lane in LANES if "%i" in argv else ("",):
        args = [a.replace("%i", lane) for a in argv[1:]]
        done = subprocess.run([sys.executable, "-m", "hubbridge.workflows.cli", *args, "--help"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{path.name}: hubbridge {' '.join(args)}: {done.stderr[-1500:]}"


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    verify = shutil.which("systemd-analyze")
    assert verify, "systemd-analyze is needed to check the shipped units"
    venv = Path(sys.executable).parent.parent
    checked: list[str] = []
    for path in shipped_units():
        # the units as they would be installed, with this checkout's venv and env file standing in for /opt, /etc
        text = path.read_text().replace(SHIPPED_VENV, str(venv))
        text = text.replace(SHIPPED_ENV_FILE, str(ROOT / "deploy" / "hubbridge.env.example"))
        names = [path.name.replace("@.", f"@{lane}.") for lane in LANES] if "@." in path.name else [path.name]
        for name in names:
            (tmp_path / name).write_text(text)
            checked.append(str(tmp_path / name))
    done = subprocess.run([verify, "verify", "--man=no", *checked], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_every_hubbridge_command_in_the_guide_runs() -> None:
    commands = [c for c in guide_commands() if c[0] == "hubbridge"]
    assert len(commands) >= 5
    for argv in commands:
        args = argv[1:] if "--help" in argv else [*argv[1:], "--help"]
        done = subprocess.run([sys.executable, "-m", "hubbridge.workflows.cli", *args], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr[-1500:]}"


def test_systemctl_and_install_lines_name_only_shipped_units_and_files() -> None:
    units = {p.name.removesuffix(".service") for p in shipped_units()}
    for argv in guide_commands():
        if argv[0] == "systemctl":
            assert argv[1] in {"start", "stop", "enable", "restart"}
            for name in (a for a in argv[2:] if not a.startswith("--")):
                assert name in units or re.sub(r"@[a-z]+$", "@", name) in units, name
                if "@" in name:
                    assert name.split("@")[1] in LANES
        elif argv[0] == "install":
            sources = [a for a in argv[1:] if a.startswith("deploy/")]
            assert sources, argv
            for source in sources:
                assert list(ROOT.glob(source)), source
        elif argv[0] == "systemd-analyze":
            assert argv[1] == "verify"
        else:
            assert argv[0] in {"hubbridge", "pg_dump", "pg_restore", "rabbitmqctl", "promtool"}, argv


def test_the_promtool_commands_pass_on_the_shipped_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        # CI installs it (.ci/promtool, from Debian's prometheus package): there, missing is a failure
        assert not os.environ.get("CI"), "promtool is missing: bash .ci/promtool installs it"
        pytest.skip("promtool not installed (bash .ci/promtool installs it)")
    ran = [argv for argv in guide_commands() if argv[0] == "promtool"]
    assert {tuple(argv[:3]) for argv in ran} == {("promtool", "check", "rules"), ("promtool", "test", "rules")}
    for argv in ran:
        done = subprocess.run([promtool, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    # every rules file shipped is one the guide checks
    checked = {arg for argv in ran for arg in argv[3:]}
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "deploy" / "prometheus").glob("*.yml")} <= checked


def test_the_backup_commands_dump_and_list_a_real_store(pg_url: str, tmp_path: Path) -> None:
    db = make_url(pg_url)
    conn = ["--host", db.host or "127.0.0.1", "--port", str(db.port or 5432), "--username", db.username or "postgres"]
    for argv in guide_commands():
        if argv[0] == "pg_dump":
            args = [a.replace("hubbridge.dump", str(tmp_path / "hubbridge.dump")) for a in argv[1:-1]]
            done = subprocess.run(["pg_dump", *conn, *args, str(db.database)], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
        elif argv[0] == "pg_restore":
            done = subprocess.run(["pg_restore", *argv[1:-1], str(tmp_path / "hubbridge.dump")], capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert "TABLE public cases" in done.stdout and "alembic_version" in done.stdout


def test_the_rabbitmq_commands_make_a_vhost_hubbridge_can_use() -> None:
    vhost = f"hubbridge-deploy-{uuid.uuid4().hex[:8]}"
    ran = 0
    try:
        for argv in guide_commands():
            if argv[0] != "rabbitmqctl":
                continue
            # the guide's vhost and user, on a private vhost and the test broker's user
            args = [vhost if argv[i - 1] in ("add_vhost", "-p") else a for i, a in enumerate(argv) if i]
            args = ["guest" if a == "hubbridge" else a for a in args]
            done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            ran += 1
        listed = subprocess.run(["rabbitmqctl", "list_permissions", "-p", vhost], capture_output=True, text=True,
                                timeout=120)
        assert "guest" in listed.stdout
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=120)
    assert ran == 2
