"""The ``examples/forwarder.py`` example against the real app in process."""

import importlib.util
import json
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from workbench.model import load_bundle
from workbench.service.inference_app import create_app
from workbench.service.settings import InferenceSettings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "forwarder.py"


@pytest.fixture(scope="module")
def forwarder_module():
    spec = importlib.util.spec_from_file_location("forwarder", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["forwarder"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["forwarder"]


def line(minute: int, server: str = "ppweb001", **extra) -> str:
    record = {"timestamp": f"2025-10-13T16:{minute:02d}:00Z", "server_name": server, "cpu_pct": 20.0, **extra}
    return json.dumps(record) + "\n"


def test_forwarder_tails_batches_and_resumes(tmp_path, tiny_bundle_dir, forwarder_module):
    app = create_app(
        InferenceSettings(bundle=tiny_bundle_dir, state_dir=None, device="cpu", forecast_worker="thread"),
        bundle=load_bundle(tiny_bundle_dir, device="cpu"),
    )
    source, offsets = tmp_path / "metrics.jsonl", tmp_path / "offset"
    source.write_text(line(0) + line(5) + "not json\n" + line(10, cpu_pct=300.0) + line(15) + line(20))
    with TestClient(app) as client:
        fwd = forwarder_module.Forwarder(source, client, batch=2, offset_file=offsets)
        assert fwd.offset == 0  # no offset saved yet: from the start
        assert fwd.poll() == 4
        assert [(r["field"], r["index"]) for r in fwd.refused] == [("cpu_pct", 0)]  # index within its batch
        assert int(offsets.read_text()) == source.stat().st_size
        with open(source, "a") as fh:
            fh.write(line(25) + '{"timestamp": "2025-10-13T16:30:00Z", "server_na')  # a line still being written
        assert fwd.poll() == 5
        with open(source, "a") as fh:
            fh.write('me": "ppweb001"}\n')
        again = forwarder_module.Forwarder(source, client, batch=2, offset_file=offsets)  # a restarted forwarder
        assert again.poll() == 1 and int(offsets.read_text()) == source.stat().st_size
        assert client.get("/status").json()["ingest"]["records_accepted"] == 6


def test_forwarder_retries_until_the_daemon_answers(tmp_path, forwarder_module):
    answers = [503, httpx.ConnectError("down"), 200]
    seen = []

    def target(request):
        action = answers.pop(0)
        if isinstance(action, Exception):
            raise action
        seen.append(json.loads(request.content))
        return httpx.Response(action, json={"records_added": 1})

    source = tmp_path / "m.jsonl"
    source.write_text(line(0))
    pauses = []
    with httpx.Client(base_url="http://daemon", transport=httpx.MockTransport(target)) as client:
        fwd = forwarder_module.Forwarder(source, client, offset_file=tmp_path / "o", sleep=pauses.append)
        assert fwd.poll() == 1
    assert pauses == [0.5, 1.0] and len(seen) == 2 and seen[-1]["records"][0]["cpu_pct"] == 20.0
