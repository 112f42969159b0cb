import itertools
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from workbench import contract
from workbench.errors import ConfigError
from workbench.simulator import INCIDENT_TYPES, FleetStream, SimulatorConfig, make_fleet, simulate

BUSY = SimulatorConfig(incident_rates=dict.fromkeys(INCIDENT_TYPES, 1.0))
START = datetime(2025, 1, 6, 18, 0, tzinfo=UTC)  # the first midnight comes after 72 steps


def take(stream: FleetStream, n: int) -> pl.DataFrame:
    return pl.concat(itertools.islice(stream, n)).sort(contract.SERVER, contract.TIMESTAMP)


def test_stream_equals_batch_across_day_boundaries() -> None:
    fleet = make_fleet(5, seed=21)
    stream = FleetStream(fleet=fleet, scenario="critical", start=START, config=BUSY)
    streamed = take(stream, 400)
    batch = simulate(fleet, 400 / 288, scenario="critical", start=START, config=BUSY)
    assert streamed.equals(batch.metrics)
    assert stream.incidents().height > 5 and stream.incidents().equals(batch.incidents)


def test_each_tick_is_one_contract_valid_step_of_the_fleet() -> None:
    stream = FleetStream(7, seed=1)
    first, second = next(stream), next(stream)
    assert first.height == 7 and first.columns == list(contract.COLUMNS)
    assert contract.validate(first).equals(first)
    assert first[contract.SERVER].to_list() == sorted(first[contract.SERVER])
    assert first[contract.TIMESTAMP].n_unique() == 1
    gap = second[contract.TIMESTAMP][0] - first[contract.TIMESTAMP][0]
    assert gap.total_seconds() == contract.STEP_SECONDS and stream.steps == 2


def test_scenario_switch_changes_later_steps_of_affected_servers_only() -> None:
    fleet = make_fleet(20, seed=5)
    calm = FleetStream(fleet=fleet, start=START, config=BUSY)
    switched = FleetStream(fleet=fleet, start=START, config=BUSY)
    before = take(switched, 100)
    assert before.equals(take(calm, 100))
    assert switched.set_scenario("critical").name == "critical"
    status = switched.scenario_status()
    assert status["scenario"] == "critical" and status["intensity"] == 2.0 and status["step"] == 100
    affected = status["affected_servers"]
    assert len(affected) == 6 and calm.scenario_status()["affected_servers"] == []
    after, after_calm = take(switched, 300), take(calm, 300)
    others = pl.col(contract.SERVER).is_in(affected).not_()
    assert after.filter(others).equals(after_calm.filter(others))
    assert not after.equals(after_calm)

    switch_time = after[contract.TIMESTAMP].min()
    late = (pl.col("precursor_start") >= switch_time) & pl.col(contract.SERVER).is_in(affected)
    assert switched.incidents().filter(late).height > 2 * calm.incidents().filter(late).height
    early = pl.col("precursor_start") < switch_time
    before_switch = switched.incidents().filter(early).drop("incident_id")
    assert before_switch.equals(calm.incidents().filter(early).drop("incident_id"))


def test_switching_back_restores_the_healthy_rates() -> None:
    fleet = make_fleet(10, seed=2)
    stream = FleetStream(fleet=fleet, config=BUSY)
    take(stream, 10)
    stream.set_scenario("degrading")
    stream.set_scenario("healthy")  # at the same step: the later switch wins
    reference = FleetStream(fleet=fleet, config=BUSY)
    take(reference, 10)
    assert take(stream, 50).equals(take(reference, 50))
    assert stream.scenario_status()["affected_servers"] == []


def test_unknown_scenario_is_refused_and_changes_nothing() -> None:
    stream = FleetStream(3, seed=0)
    with pytest.raises(ConfigError, match="allowed: healthy, degrading, critical"):
        stream.set_scenario("meltdown")
    assert stream.scenario_status()["scenario"] == "healthy"
    with pytest.raises(ConfigError, match="tick_seconds"):
        FleetStream(3, seed=0, tick_seconds=-1)


def test_paced_keeps_one_step_per_tick_on_an_injected_clock() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    stream = FleetStream(3, seed=0, tick_seconds=5.0, clock=lambda: now[0], sleep=sleep)
    frames = []
    for frame in stream.paced(steps=4):
        frames.append(frame)
        now[0] += 1.0  # the consumer takes a second per step
    assert len(frames) == 4 and stream.steps == 4
    assert slept == pytest.approx([4.0, 4.0, 4.0, 4.0])
    slept.clear()
    for _ in stream.paced(steps=3):
        now[0] += 7.0  # a consumer slower than the tick: no sleeping at all
    assert slept == [] and stream.steps == 7


def test_incidents_in_progress_match_the_states_streamed() -> None:
    stream = FleetStream(fleet=make_fleet(6, seed=3), scenario="critical", start=START, config=BUSY)
    assert stream.incidents_in_progress() == []
    seen = {"precursor": 0, "critical": 0}
    for _ in range(300):
        frame = next(stream)
        running = {r["server"]: r for r in stream.incidents_in_progress()}
        states = dict(zip(frame[contract.SERVER], frame[contract.STATE], strict=True))
        for server, state in states.items():
            # the critical_issue state is the simulator's label of an incident's critical phase
            assert (state == "critical_issue") == (running.get(server, {}).get("phase") == "critical"), server
        for row in running.values():
            seen[row["phase"]] += 1
    assert seen["precursor"] > 20 and seen["critical"] > 20, seen
    recent = stream.recent_incidents(hours=24)
    truth = stream.incidents().filter(pl.col("recovered") > frame[contract.TIMESTAMP][0] - timedelta(hours=24))
    assert [r["server"] for r in recent] == truth.sort("precursor_start")[contract.SERVER].to_list()
    assert all(datetime.fromisoformat(r["precursor_start"]) <= datetime.fromisoformat(r["recovered"]) for r in recent)
