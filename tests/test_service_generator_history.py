"""The generator's --history: the stream's first steps sent at once, in batches, before the paced steps."""

import json

import httpx
import polars as pl
import pytest
from click.testing import CliRunner

from workbench import contract as c
from workbench.cli import main
from workbench.errors import ConfigError
from workbench.records import validate_records
from workbench.service.generator_app import Generator
from workbench.service.settings import GeneratorSettings
from workbench.simulator import FleetStream


class Target:
    """A fake inference daemon: answers from a script, then 200; records the bodies it accepted."""

    def __init__(self, script=()):
        self.script = list(script)
        self.bodies: list[list[dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        action = self.script.pop(0) if self.script else 200
        if action == 200:
            self.bodies.append(json.loads(request.content)["records"])
        return httpx.Response(action, json={"status": "success" if action == 200 else "error"})


def settings(**overrides) -> GeneratorSettings:
    base = {"servers": 3, "seed": 5, "tick": 0.0, "max_backoff": 0.01, "steps": 2, "history": 10}
    return GeneratorSettings(**{**base, "history_batch_records": 12, **overrides})


def timestamps(records: list[dict]) -> list[str]:
    return sorted({r[c.TIMESTAMP] for r in records})


def test_history_goes_first_in_batches_within_the_record_limit_then_the_live_steps():
    target = Target()
    generator = Generator(settings(), transport=httpx.MockTransport(target))
    generator.run()
    # 12 records per POST = 4 steps of 3 servers: 4 + 4 + 2 history steps, then 2 live steps of one each
    assert [len(b) for b in target.bodies] == [12, 12, 6, 3, 3]
    assert (generator.history_sent, generator.steps_sent, generator.records_sent) == (10, 12, 36)
    sent = [r[c.TIMESTAMP] for body in target.bodies for r in body]
    assert sent == sorted(sent) and len(set(sent)) == 12  # oldest first, each step once
    stream = FleetStream(3, seed=5)
    expected = pl.concat([next(stream) for _ in range(12)])
    got = validate_records([r for body in target.bodies for r in body]).frame
    assert got.equals(expected)  # exactly the stream's own steps, nothing skipped or repeated


def test_a_batch_is_never_smaller_than_one_step():
    target = Target()
    generator = Generator(settings(history=3, history_batch_records=1, steps=1), transport=httpx.MockTransport(target))
    generator.run()
    assert [len(timestamps(b)) for b in target.bodies] == [1, 1, 1, 1]


def test_a_history_batch_is_retried_until_accepted():
    target = Target([503, 503])
    generator = Generator(settings(history=4, steps=1), transport=httpx.MockTransport(target))
    generator.run()
    assert generator.retries == 2 and generator.history_sent == 4
    assert [len(timestamps(b)) for b in target.bodies] == [4, 1]


def test_a_refused_history_batch_is_counted_and_streaming_goes_on():
    target = Target([422])
    generator = Generator(settings(history=8, steps=1), transport=httpx.MockTransport(target))
    generator.run()
    assert (generator.history_sent, generator.steps_refused, generator.steps_sent) == (4, 4, 5)
    assert generator.status()["history_sent"] == 4 and generator.status()["history_steps"] == 8


def test_without_history_nothing_changes():
    target = Target()
    generator = Generator(settings(history=0, steps=3), transport=httpx.MockTransport(target))
    generator.run()
    assert [len(b) for b in target.bodies] == [3, 3, 3] and generator.history_sent == 0


def test_settings_and_cli_name_the_allowed_history():
    with pytest.raises(ConfigError, match=r"history=-1 must be an integer in \[0, 100000\]"):
        GeneratorSettings(history=-1)
    with pytest.raises(ConfigError, match="history_batch_records=0 must be an integer >= 1"):
        GeneratorSettings(history_batch_records=0)
    result = CliRunner().invoke(main, ["stream", "--help"])
    assert result.exit_code == 0 and "--history STEPS" in result.output
    bad = CliRunner().invoke(main, ["stream", "--history", "-5"])
    assert bad.exit_code == 2 and "--history" in bad.output
