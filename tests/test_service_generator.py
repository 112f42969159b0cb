"""The generator daemon: every step delivered once despite failures, and scenario control over REST."""

import json
import time

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from workbench import contract as c
from workbench.errors import ConfigError
from workbench.records import validate_records
from workbench.service.generator_app import Generator, create_generator_app, encode_step
from workbench.service.settings import GeneratorSettings
from workbench.simulator import FleetStream


class Target:
    """A fake inference daemon: answers from a script, then 200; records what it was sent."""

    def __init__(self, script=()):
        self.script = list(script)
        self.bodies: list[dict] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        action = self.script.pop(0) if self.script else 200
        if isinstance(action, Exception):
            raise action
        if action == 200:
            self.bodies.append(json.loads(request.content))
            self.headers.append(request.headers)
        return httpx.Response(action, json={"status": "success" if action == 200 else "error"})


def settings(**overrides) -> GeneratorSettings:
    return GeneratorSettings(**{"servers": 3, "tick": 0.0, "max_backoff": 0.01, "steps": 3, **overrides})


def test_a_step_body_is_exactly_the_contract_frame():
    frame = next(FleetStream(4, seed=1))
    body = json.loads(encode_step(frame))
    batch = validate_records(body["records"])
    assert batch.rejected == [] and batch.frame.equals(frame)


def test_each_step_is_retried_until_accepted_and_none_is_skipped():
    target = Target([503, httpx.ConnectError("refused"), 429, 200])
    generator = Generator(settings(), transport=httpx.MockTransport(target))
    generator.run()
    assert (generator.steps_sent, generator.retries, generator.records_sent) == (3, 3, 9)
    times = [pl.Series([b["records"][0][c.TIMESTAMP]]).str.to_datetime()[0] for b in target.bodies]
    assert [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)] == [300, 300]
    assert generator.last_error is None


def test_a_step_refused_as_invalid_is_not_retried():
    target = Target([422])
    generator = Generator(settings(steps=2), transport=httpx.MockTransport(target))
    generator.run()
    assert (generator.steps_sent, generator.steps_refused, generator.retries) == (1, 1, 0)
    assert generator.last_error is None  # the later step went through


def test_stop_interrupts_the_backoff():
    target = Target([503] * 1000)
    generator = Generator(settings(max_backoff=5.0), transport=httpx.MockTransport(target))
    generator.start()
    time.sleep(0.3)
    generator.stop()
    generator.thread.join(5)
    assert not generator.streaming and generator.steps_sent == 0 and "HTTP 503" in generator.last_error


def test_the_scenario_api(monkeypatch):
    target = Target()
    app = create_generator_app(settings(steps=None, tick=0.02, api_key="k"), transport=httpx.MockTransport(target))
    with TestClient(app) as client:
        status = client.get("/scenario/status").json()
        assert status["scenario"] == "healthy" and status["multiplier"] == 1.0 and status["affected_servers"] == []
        assert {"uptime_seconds", "steps_sent", "target", "affected_fraction"} <= set(status)
        assert client.post("/scenario/set", json={"scenario": "critical"}).status_code == 401
        keyed = {"X-API-Key": "k"}
        answer = client.post("/scenario/set", json={"scenario": "critical"}, headers=keyed)
        assert answer.status_code == 200
        body = answer.json()
        assert (body["status"], body["old_scenario"], body["new_scenario"]) == ("success", "healthy", "critical")
        assert body["affected_servers"] >= 1 and "critical" in body["message"]
        assert client.get("/scenario/status").json()["scenario"] == "critical"
        bad = client.post("/scenario/set", json={"scenario": "apocalypse"}, headers=keyed)
        assert bad.status_code == 422 and bad.json()["allowed"] == ["healthy", "degrading", "critical"]
        assert "healthy, degrading, critical" in bad.json()["detail"]
        assert client.post("/scenario/set", json={}, headers=keyed).status_code == 422
        nan = client.post("/scenario/set", content=b'{"scenario": NaN}', headers=keyed)
        assert nan.status_code == 400 and "malformed JSON" in nan.json()["detail"]
        huge = client.post("/scenario/set", json={"scenario": "x" * 10_000_000}, headers=keyed)
        assert huge.status_code == 413 and len(huge.content) < 1000
        long = client.post("/scenario/set", json={"scenario": "y" * 3000}, headers=keyed)
        assert long.status_code == 422 and len(long.content) < 1000
        assert client.get("/health").json()["running"]
        deadline = time.monotonic() + 10
        while len(target.bodies) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(target.bodies) >= 2 and target.headers[0]["x-api-key"] == "k"


def test_settings_name_what_is_allowed():
    with pytest.raises(ConfigError, match="scenario='bad'; allowed: healthy, degrading, critical"):
        GeneratorSettings(scenario="bad")
    with pytest.raises(ConfigError, match="target='ftp://x' must be an http"):
        GeneratorSettings(target="ftp://x")
    with pytest.raises(ConfigError, match=r"servers=0 must be an integer in \[1, 100000\]"):
        GeneratorSettings(servers=0)
