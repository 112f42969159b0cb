"""The feed's write path without HTTP: body parsing, per-record refusals, log before acknowledgement."""

import json
import math

import numpy as np
import pytest
from payloads import SEED_001_RECORD, SEED_004_RECORD

from workbench import contract as c
from workbench.inference.window import WindowStore
from workbench.service.ingest import BodyError, Ingestor, parse_body
from workbench.service.journal import Journal, Segment, segment_path
from workbench.service.schemas import SEED_EXAMPLE

SEED_001 = {"records": [SEED_001_RECORD]}  # the INFERENCE_README example, as it is
SEED_004 = {"records": [SEED_004_RECORD]}  # the TEAM_HANDOFF curl example, as it is
NOW = 1_760_400_000.0  # 2025-10-14, after the seeds' timestamps


def good(server: str = "ppweb001", minute: int = 0, **metrics):
    return {"timestamp": f"2025-10-13T16:{minute:02d}:00Z", "server_name": server, "cpu_pct": 10.0, **metrics}


@pytest.fixture
def ingestor() -> Ingestor:
    return Ingestor(WindowStore(24), None, clock=lambda: NOW)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"records": [', 400, "malformed JSON"),
        (b"\xff\xfe not utf-8", 400, "malformed JSON"),
        (b"[" * 100_000, 400, "malformed JSON"),
        (b'{"records": [1' + b"1" * 5000 + b"]}", 400, "malformed JSON"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b'{"data": []}', 422, "records: required field is missing"),
        (b'{"records": {"a": 1}}', 422, "records: must be a list"),
        (json.dumps({"records": [{}] * 11}).encode(), 413, "11 records in one body; at most 10"),
    ],
)
def test_unreadable_bodies_are_refused_with_a_reason(body, status, message):
    with pytest.raises(BodyError, match=message) as info:
        parse_body(body, max_records=10)
    assert info.value.status == status


def test_nan_and_infinity_literals_reach_per_record_validation():
    records = parse_body(b'{"records": [{"cpu_pct": NaN}, {"cpu_pct": -Infinity}]}', 10)
    assert math.isnan(records[0]["cpu_pct"]) and records[1]["cpu_pct"] == -math.inf


@pytest.mark.parametrize("payload", [SEED_001, SEED_004, SEED_EXAMPLE], ids=["seed001", "seed004", "openapi-example"])
def test_the_earlier_systems_payloads_are_accepted_as_they_are(ingestor, payload):
    outcome = ingestor.feed(parse_body(json.dumps(payload).encode(), 100))
    assert outcome.status == 200, outcome.body
    assert outcome.body["status"] == "success" and outcome.body["records_added"] == len(payload["records"])
    if any("load_average" in r for r in payload["records"]):
        assert outcome.body["ignored_fields"] == ["load_average"]


def test_bad_records_are_named_and_the_good_ones_kept(ingestor):
    records = [
        good("a", 0),
        good("b", 0, cpu_pct=float("nan")),
        good("c", 0, mem_pct=250.0),
        good("d", 0, state="exploding"),
        {"server_name": "e"},
        good("f", 0, cpu_pct="45"),
        "not an object",
        good("g", 5),
        good("h", 0, error_rate=math.inf),
        {**good("i", 0), "timestamp": "1066-10-14T09:00:00Z"},
    ]
    outcome = ingestor.feed(records)
    assert outcome.status == 422
    body = outcome.body
    assert body["status"] == "partial" and body["records_added"] == 2 and body["records_rejected"] == 8
    named = {(r["index"], r["field"]) for r in body["rejected"]}
    assert named == {
        (1, "cpu_pct"),
        (2, "mem_pct"),
        (3, "state"),
        (4, "timestamp"),
        (5, "cpu_pct"),
        (6, "<record>"),
        (8, "error_rate"),
        (9, "timestamp"),
    }
    assert all(r["error"] for r in body["rejected"])
    assert ingestor.store.servers == ["a", "g"]  # nothing of a refused record is stored


def test_all_bad_is_422_rejected_and_stores_nothing(ingestor):
    outcome = ingestor.feed([good(cpu_pct=-1.0), {"timestamp": "x", "server_name": "y"}])
    assert (outcome.status, outcome.body["status"], outcome.body["records_added"]) == (422, "rejected", 0)
    assert ingestor.store.servers == [] and ingestor.tick_count == 0


def test_timestamps_from_the_future_are_refused_not_stored(ingestor):
    far = {**good("future"), "timestamp": "2099-01-01T00:00:00Z"}
    outcome = ingestor.feed([good("now"), far])
    assert outcome.status == 422
    assert outcome.body["rejected"] == [
        {"index": 1, "field": "timestamp", "error": outcome.body["rejected"][0]["error"]}
    ]
    assert "ahead of the daemon's clock" in outcome.body["rejected"][0]["error"]
    assert ingestor.store.servers == ["now"]  # a far-future step would have evicted every other server


def test_accepted_batches_are_logged_before_the_answer(tmp_path):
    journal = Journal(tmp_path, {"format": 1}, fsync=True, first_segment=1)
    ingestor = Ingestor(WindowStore(24), journal, clock=lambda: NOW)
    synced = []
    sync = journal.sync
    journal.sync = lambda upto: (synced.append(upto), sync(upto))  # type: ignore[method-assign]
    outcome = ingestor.feed([good("a", 0), good("b", 0, cpu_pct=-5.0), good("a", 5)])
    assert outcome.body["records_added"] == 2 and synced == [1]
    (frame,) = list(Segment(segment_path(tmp_path, 1)).frames())
    assert frame[c.SERVER].to_list() == ["a", "a"] and frame["cpu_pct"].to_list() == [10.0, 10.0]
    assert ingestor.tick_count == 1 and ingestor.records == 2
    journal.close()


def test_counters_and_generation_move_only_with_accepted_data(ingestor):
    ingestor.feed([good("a", 0)])
    ingestor.feed([good("a", 5, cpu_pct=-1.0)])
    counters = ingestor.counters
    assert (counters.batches, counters.records_accepted, counters.records_rejected) == (1, 1, 1)
    assert ingestor.generation == 1
    assert ingestor.newest_step == int(np.datetime64("2025-10-13T16:00:00", "s").astype(int)) // c.STEP_SECONDS


def test_absurd_magnitudes_of_unbounded_metrics_are_refused(ingestor):
    outcome = ingestor.feed([good("a", disk_io_mb_s=1.7e308), good("a", latency_ms=12.0), good("b", net_in_mb_s=2e9)])
    assert outcome.status == 422 and outcome.body["records_added"] == 1
    fields = [(r["index"], r["field"]) for r in outcome.body["rejected"]]
    assert fields == [(0, "disk_io_mb_s"), (2, "net_in_mb_s")]
    assert "implausibly large" in outcome.body["rejected"][0]["error"]
    assert np.isfinite(ingestor.store.state()["sum"]).all()
