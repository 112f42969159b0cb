"""Debian's Prometheus tools for the tests: installed by ``make prometheus`` when missing, never skipped."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMTOOL = "/usr/bin/promtool"
AMTOOL = "/usr/bin/amtool"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
PROMETHEUS = "/usr/bin/prometheus"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PACKAGES = "prometheus prometheus-alertmanager prometheus-node-exporter"


def tool(path: str) -> str:
    """Return ``path`` once it is an executable, running ``make prometheus`` (apt-get) first when it is not."""
    if shutil.which(path) is None:
        subprocess.run(["make", "prometheus"], cwd=ROOT, check=False, timeout=900)
    if shutil.which(path) is None:
        pytest.fail(f"{path} is missing after `make prometheus` (apt-get install {PACKAGES})")
    return path


def run_tool(path: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run one of the tools in the repository root and return its exit status and output."""
    return subprocess.run(
        [tool(path), *args], cwd=ROOT, input=stdin.decode() if stdin is not None else None,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
