"""examples/schedule/: the nightly report script, its systemd units and crontab line, run as written.

The commands are read from the example files themselves (``ExecStart=`` / ``Environment=`` of the
service, the command of the crontab line) with only their ``/opt/workbench`` prefix replaced by this
checkout, so the files a user copies are the files tested.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ROOT / "examples" / "schedule"
SCRIPT = SCHEDULE / "nightly-report.sh"
SERVICE = SCHEDULE / "workbench-report.service"
TIMER = SCHEDULE / "workbench-report.timer"
CRONTAB = SCHEDULE / "crontab"
PREFIX = "/opt/workbench"
LOCK = ".nightly-report.lock"  # in the reports folder
# The tiny parameters of tests/test_notebooks.py's 03_evaluate run (out_dir left to the runner: the run folder).
TINY = (
    "-p split fleet -p test_days 0.6 -p test_servers 3 -p origin_stride 24 -p warning_stride 6"
    " -p history_steps 300 -p max_servers 2 -p progress false"
)


def here(text: str) -> str:
    """``text`` with the install prefix ``/opt/workbench`` replaced by this checkout."""
    return text.replace(PREFIX, str(ROOT))


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a systemd unit, by key (comments and section headers left out)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def service_command() -> tuple[list[str], dict[str, str]]:
    """The service's ``ExecStart=`` command and its ``Environment=`` variables."""
    settings = unit_settings(SERVICE)
    (exec_start,) = settings["ExecStart"]
    env = dict(item.split("=", 1) for value in settings.get("Environment", []) for item in shlex.split(value))
    return [here(word) for word in shlex.split(exec_start)], {k: here(v) for k, v in env.items()}


def cron_line() -> tuple[str, list[str], dict[str, str], list[str]]:
    """The crontab's one entry: its schedule, command, leading variables and output redirection."""
    (line,) = [x for x in CRONTAB.read_text().splitlines() if x.strip() and not x.lstrip().startswith("#")]
    *when, command = line.split(None, 5)
    words = shlex.split(here(command))
    env = {}
    while "=" in words[0] and not words[0].startswith("/"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    redirect = words.index(">>")
    return " ".join(when), words[:redirect], env, words[redirect:]


def run(argv: list[str], env: dict[str, str], tmp_path: Path, log: Path | None = None, **extra: str):
    """Run ``argv`` from ``tmp_path`` with the inherited environment plus ``env`` and ``extra``.

    With ``log``, stdout and stderr are appended to it as the crontab's ``>> LOG 2>&1`` does.
    """
    full = {**os.environ, **env, **extra}
    full.pop("WORKBENCH_REPORT_NOTEBOOK", None)
    options = {"env": full, "cwd": tmp_path, "timeout": 600, "check": False}
    if log is None:
        return subprocess.run(argv, capture_output=True, text=True, **options)
    with log.open("a") as out:
        return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **options)


def runs(reports: Path) -> list[tuple[Path, dict]]:
    return [(f.parent, json.loads(f.read_text())) for f in sorted(reports.glob("*/*/run.json"))]


@pytest.fixture(scope="module")
def critical_fleet_dir(tmp_path_factory) -> Path:
    """Six servers over two days under the ``critical`` scenario, with incidents (as in test_notebooks.py)."""
    from workbench.data import write_parquet
    from workbench.simulator import make_fleet, simulate

    sim = simulate(make_fleet(6, seed=1), 2.0, scenario="critical")
    return write_parquet(sim.metrics, tmp_path_factory.mktemp("critical"), incidents=sim.incidents)


def test_the_script_is_executable_bash():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in SCRIPT.read_text()
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_timer_and_service_are_as_documented():
    timer, service = unit_settings(TIMER), unit_settings(SERVICE)
    assert timer["OnCalendar"] == ["*-*-* 02:30:00"] and timer["Persistent"] == ["true"]
    assert timer["RandomizedDelaySec"] == ["10min"] and timer["WantedBy"] == ["timers.target"]
    assert service["Type"] == ["oneshot"] and service["Nice"] == ["10"] and service["IOSchedulingClass"] == ["idle"]
    assert service["ExecStart"] == [f"{PREFIX}/examples/schedule/nightly-report.sh"]
    assert service["Environment"] == [f"WORKBENCH_HOME={PREFIX}"]
    steps = ("systemctl daemon-reload", "systemctl enable --now workbench-report.timer", "list-timers", "journalctl")
    for step in steps:
        assert step in SERVICE.read_text(), step


def test_systemd_accepts_the_units(tmp_path):
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed (a container)")
    for unit in (SERVICE, TIMER):
        (tmp_path / unit.name).write_text(here(unit.read_text()))  # ExecStart must exist to verify
    result = subprocess.run(
        [verify, "verify", str(tmp_path / TIMER.name), str(tmp_path / SERVICE.name)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "ignoring" not in result.stderr, result.stderr


def test_cron_runs_the_service_command_nightly_into_a_log():
    when, argv, env, redirect = cron_line()
    assert when == "30 2 * * *"
    assert (argv, env) == service_command()
    assert redirect == [">>", f"{ROOT}/reports/nightly.log", "2>&1"]
    (line,) = [x for x in CRONTAB.read_text().splitlines() if x.startswith("30 2")]
    assert line in (SCHEDULE / "README.md").read_text()  # the README shows the line of the file


@pytest.mark.slow
def test_the_service_command_runs_the_report_and_indexes_it(tmp_path, tiny_bundle_dir, critical_fleet_dir):
    argv, env = service_command()
    reports = tmp_path / "reports"
    began = time.perf_counter()
    result = run(
        argv, env, tmp_path,
        WORKBENCH_REPORTS=str(reports), BUNDLE=str(tiny_bundle_dir), DATA=str(critical_fleet_dir),
        WORKBENCH_REPORT_ARGS=TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    ((folder, record),) = runs(reports)
    assert folder.parent == reports / "03_evaluate" and record["status"] == "ok", record
    assert record["parameters"]["bundle"] == str(tiny_bundle_dir) and record["parameters"]["max_servers"] == 2
    assert record["parameters"]["progress"] is False and record["injected"]["out_dir"] == str(folder)
    assert json.loads((folder / "metrics.json").read_text())["servers"] == 2
    page = (reports / "index.html").read_text()
    assert f'href="03_evaluate/{folder.name}/03_evaluate.html"' in page and "1 run(s)" in page
    assert "03_evaluate ok in" in result.stdout and "finished with status 0" in result.stderr
    assert time.perf_counter() - began < 300


def test_a_second_start_while_one_runs_exits_quietly(tmp_path):
    _, argv, env, _ = cron_line()
    reports, log = tmp_path / "reports", tmp_path / "nightly.log"
    reports.mkdir()
    with (reports / LOCK).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        began = time.perf_counter()
        result = run(argv, env, tmp_path, log, WORKBENCH_REPORTS=str(reports), BUNDLE=str(tmp_path / "none"))
        seconds = time.perf_counter() - began
    assert result.returncode == 0, log.read_text()
    assert seconds < 10 and "already running" in log.read_text()
    assert [p.name for p in reports.iterdir()] == [LOCK]  # no run folder, no index


def test_a_failed_report_exits_with_its_status_and_frees_the_lock(tmp_path):
    # A stand-in for the checkout whose `workbench report` fails as a real failed run does
    # (test_report.py runs one): the script must pass its status on and release the lock.
    home = tmp_path / "home"
    (home / ".venv" / "bin").mkdir(parents=True)
    fake = home / ".venv" / "bin" / "workbench"
    fake.write_text('#!/bin/sh\necho "report failed: $*" >&2\nexit 3\n')
    fake.chmod(0o755)
    _, argv, env, _ = cron_line()
    log = tmp_path / "nightly.log"
    result = run(argv, {**env, "WORKBENCH_HOME": str(home)}, tmp_path, log, BUNDLE="models/x")
    assert result.returncode == 3, log.read_text()
    assert "report failed: report 03_evaluate -p bundle models/x" in log.read_text()
    assert "finished with status 3" in log.read_text()
    with (home / "reports" / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: the next night runs
