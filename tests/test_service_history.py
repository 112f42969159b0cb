"""``GET /history/{server}``: the recent history the dashboard's fan chart draws behind the forecast."""

import json
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from workbench import contract as c
from workbench.model import load_bundle
from workbench.service.generator_app import encode_step
from workbench.service.inference_app import create_app
from workbench.service.settings import InferenceSettings
from workbench.simulator import FleetStream

SERVERS = 3


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir):
    return load_bundle(tiny_bundle_dir, device="cpu")


@pytest.fixture
def client(tmp_path, tiny_bundle_dir, bundle):
    settings = InferenceSettings(
        bundle=tiny_bundle_dir, state_dir=None, device="cpu", poll_seconds=0.02, forecast_worker="thread"
    )
    with TestClient(create_app(settings, bundle=bundle)) as client:
        yield client


def fed(client: TestClient, n: int) -> list[dict]:
    """Feed ``n`` stream steps and return the records sent, as JSON."""
    stream = FleetStream(SERVERS, seed=5)
    records = []
    for _ in range(n):
        body = encode_step(next(stream))
        assert client.post("/feed/data", content=body).status_code == 200
        records += json.loads(body)["records"]
    return records


def test_history_returns_the_fed_values_on_the_step_grid(client, bundle):
    records = fed(client, 6)
    server = records[0][c.SERVER]
    mine = [r for r in records if r[c.SERVER] == server]
    doc = client.get(f"/history/{server}", params={"steps": 4}).json()
    assert set(doc) == {"server", "profile", "timestamps", "metrics", "forecast_start"}
    assert doc["server"] == server and doc["profile"] == mine[0][c.PROFILE]
    times = [datetime.fromisoformat(t) for t in doc["timestamps"]]
    gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)}
    assert len(times) == 4 and gaps == {c.STEP_SECONDS}
    assert times[-1] == datetime.fromisoformat(mine[-1][c.TIMESTAMP].replace("Z", "+00:00"))
    start = datetime.fromisoformat(doc["forecast_start"])
    assert (start - times[-1]).total_seconds() == c.STEP_SECONDS
    assert set(doc["metrics"]) == set(bundle.targets)
    for metric, values in doc["metrics"].items():
        assert values == pytest.approx([r[metric] for r in mine[-4:]], abs=1e-4)


def test_history_is_capped_at_what_the_server_has(client):
    records = fed(client, 3)
    doc = client.get(f"/history/{records[0][c.SERVER]}", params={"steps": 200}).json()
    assert len(doc["timestamps"]) == 3 and all(len(v) == 3 for v in doc["metrics"].values())


def test_default_steps_and_unknown_server_and_bad_steps(client):
    records = fed(client, 2)
    assert len(client.get(f"/history/{records[0][c.SERVER]}").json()["timestamps"]) == 2
    missing = client.get("/history/nosuch01")
    assert missing.status_code == 404 and "nosuch01" in missing.json()["detail"]
    for bad in ("0", "-3", "abc", str(c.MAX_ENCODER_STEPS + 1)):
        assert client.get(f"/history/{records[0][c.SERVER]}", params={"steps": bad}).status_code == 422


def test_history_is_described_in_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/history/{server}" in paths and "404" in paths["/history/{server}"]["get"]["responses"]
