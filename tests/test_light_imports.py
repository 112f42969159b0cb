"""Torch only where the network runs: the entry points of processes that never run it stay light.

Each is imported in a fresh interpreter (what a new process pays), and none of the model stack's
modules may be loaded: the daemon's request process reads the bundle's JSON manifest, and the
forecast worker alone loads the network.
"""

import json
import subprocess
import sys

HEAVY = ("torch", "lightning", "pytorch_forecasting", "numba")
LIGHT_ENTRY_POINTS = [
    "workbench.service.inference_app",
    "workbench.service.generator_app",
    "workbench.service.cli",
    "workbench.dashboard",
    "workbench.dashboard.app",
    "workbench.manifest",
    "workbench.cli",
]


def loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_entry_point_imports_the_model_stack():
    # One fresh interpreter, checked after each import, so the first culprit is named.
    code = "import importlib, sys\n" + "".join(
        f"importlib.import_module({m!r})\n"
        f"assert not [h for h in {HEAVY!r} if h in sys.modules], ({m!r}, [h for h in {HEAVY!r} if h in sys.modules])\n"
        for m in LIGHT_ENTRY_POINTS
    )
    assert loaded_after(code) == []


def test_the_request_process_builds_its_daemon_without_the_model_stack(tiny_bundle_dir, tmp_path):
    code = (
        "from workbench.service.inference_app import create_app\n"
        "from workbench.service.settings import InferenceSettings\n"
        f"app = create_app(InferenceSettings(bundle={str(tiny_bundle_dir)!r}, state_dir={str(tmp_path / 's')!r}))\n"
        "daemon = app.state.daemon\n"
        "assert daemon.worker is not None and daemon.engine is None\n"
        "print(daemon.predictor.warmup().to_json()['threshold'])\n"
    )
    assert loaded_after(code) == []


def test_the_model_stack_is_still_what_a_forecast_loads(tiny_bundle_dir):
    assert "torch" in loaded_after(f"from workbench.model import load_bundle\nload_bundle({str(tiny_bundle_dir)!r})")
