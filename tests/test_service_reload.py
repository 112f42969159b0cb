"""Hot reload in process (thread worker): swap, refusals, the old model serving on, alerts kept."""

import json
import shutil

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from test_service_app import SERVERS, feed, forecast_from, steps, wait_for

from workbench.alerts import Alert, AlertTracker
from workbench.manifest import weights_digest

KEY = {"X-API-Key": "s3cret"}


def retrained(source, out):
    """A copy of ``source`` with other weights (as a fine-tuned model would have)."""
    shutil.copytree(source, out)
    weights = load_file(out / "model.safetensors")
    weights = {name: tensor * 1.01 if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    save_file(weights, out / "model.safetensors")
    return out


def reshaped(source, out, **changes):
    """A copy of ``source`` whose dataset.json says other window lengths."""
    shutil.copytree(source, out)
    spec = json.loads((out / "dataset.json").read_text())
    spec.update(changes)
    (out / "dataset.json").write_text(json.dumps(spec))
    return out


def test_a_reload_swaps_the_model_between_forecasts_and_keeps_every_window(make, tmp_path, tiny_bundle_dir, bundle):
    new = retrained(tiny_bundle_dir, tmp_path / "new")
    need = bundle.spec.min_encoder_length
    with TestClient(make()) as client:
        feed(client, steps(need))
        before = wait_for(lambda: forecast_from(client, need - 1))
        assert before["metadata"]["bundle_sha256"] == weights_digest(tiny_bundle_dir / "model.safetensors")
        status = client.get("/status").json()
        answer = client.post("/admin/reload", json={"bundle": str(new)})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "reloaded" and body["bundle"]["sha256"] == weights_digest(new / "model.safetensors")
        assert body["bundle"]["previous"]["sha256"] == before["metadata"]["bundle_sha256"]
        after = wait_for(lambda: _served_by(client, body["bundle"]["sha256"]))
        assert after["predictions"].keys() == before["predictions"].keys()  # no window reset, every server forecast
        assert after["predictions"] != before["predictions"]  # by the new weights
        again = client.get("/status").json()
        assert again["ingest"]["records_total"] == status["ingest"]["records_total"] == SERVERS * need
        assert again["warmup"] == status["warmup"]
        assert again["bundle"]["reloads"] == 1 and again["bundle"]["last_reload"]["outcome"] == "reloaded"
        feed(client, steps(1, start=need))  # feeding goes on with the new model
        wait_for(lambda: forecast_from(client, need))
    snapshot = json.loads((tmp_path / "state" / "snapshot.json").read_text())
    assert snapshot["bundle"]["sha256"] == body["bundle"]["sha256"]  # the state folder says who serves it
    restarted = make()  # a restart with the original --bundle reads the same windows
    restarted.state.daemon.close()


def _served_by(client, sha):
    doc = client.get("/predictions/current").json()
    return doc if doc["metadata"]["bundle_sha256"] == sha and doc["predictions"] else None


@pytest.mark.parametrize(
    ("change", "words"),
    [({"max_encoder_length": 96}, "max_encoder_length: running 48, new 96"), ({"targets": ["cpu_pct"]}, "targets")],
)
def test_a_bundle_that_does_not_fit_the_windows_is_refused_and_the_old_one_serves_on(
    make, tmp_path, tiny_bundle_dir, bundle, change, words
):
    if "max_encoder_length" in change:
        assert bundle.spec.max_encoder_length == 48, "the expected message assumes the tiny preset"
    other = reshaped(tiny_bundle_dir, tmp_path / "other", **change)
    with TestClient(make()) as client:
        answer = client.post("/admin/reload", json={"bundle": str(other)})
        assert answer.status_code == 409
        assert "does not fit the running windows" in answer.json()["detail"]
        assert any(words in d for d in answer.json()["differences"]), answer.json()
        state = client.get("/status").json()["bundle"]
        assert state["sha256"] == weights_digest(tiny_bundle_dir / "model.safetensors") and state["reloads"] == 0
        assert state["reloads_refused"] == 1 and state["last_reload"]["outcome"] == "refused"
        need = bundle.spec.min_encoder_length
        feed(client, steps(need))
        wait_for(lambda: forecast_from(client, need - 1))  # the old model serves on


def test_a_path_that_is_not_a_bundle_is_refused_with_why(make, tmp_path):
    with TestClient(make()) as client:
        for body, status in [({"bundle": str(tmp_path / "nowhere")}, 422), ({"bundle": ""}, 422), ({}, 422)]:
            answer = client.post("/admin/reload", json=body)
            assert answer.status_code == status, (body, answer.text)
        assert "not a usable bundle" in client.post("/admin/reload", json={"bundle": str(tmp_path)}).json()["detail"]
        assert client.get("/health").json()["status"] == "healthy"


def test_reload_needs_the_api_key_when_the_daemon_has_one(make, tiny_bundle_dir):
    with TestClient(make(api_key="s3cret")) as client:
        assert client.post("/admin/reload", json={"bundle": str(tiny_bundle_dir)}).status_code == 401
        assert client.post("/admin/reload", json={"bundle": str(tiny_bundle_dir)}, headers=KEY).status_code == 200


def test_the_alert_tracker_hands_its_alerts_and_hysteresis_over_as_json():
    tracker = AlertTracker()
    alert = Alert("s1", "cpu_pct", "critical", 97.5, 95.0, 40, 0.8, "web_server", 120, since_step=110)
    tracker.restore([{**alert.__dict__, "below": 1}])
    exported = json.loads(json.dumps(tracker.export()))
    successor = AlertTracker()
    successor.restore(exported)
    assert successor.active == [alert] and successor.export() == exported
    with pytest.raises(Exception, match="not an exported alert"):
        successor.restore([{"server": "s1"}])
