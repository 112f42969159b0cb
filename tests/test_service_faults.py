"""Faults of the state folder and hostile input: nothing acknowledged is lost silently, nothing wiped.

Each test replays one case of the fault-injection probe against the real log, snapshot and
window code: a full disk at rotation, a flipped byte mid-segment, a crash before a segment's
header, a damaged or undescribed snapshot, a future-dated record, a flood of new servers.
"""

import json
import os

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from test_service_journal import IDENTITY, empty

from workbench import contract as c
from workbench.cli import main
from workbench.errors import StateError
from workbench.inference.window import WindowStore
from workbench.records import validate_records
from workbench.service.ingest import Ingestor
from workbench.service.journal import MAGIC, Journal, segment_path, segments
from workbench.service.state import SNAPSHOT_META, StateDir
from workbench.service.state_aside import ledger
from workbench.service.state_check import inspect, repair


def write_log(directory, frames, *, rotate_after=None):
    """Feed ``frames`` through a fresh state folder (rotating after ``rotate_after`` frames) and close it."""
    state_dir = StateDir(directory, IDENTITY)
    recovered, journal = state_dir.recover(empty)
    for k, frame in enumerate(frames):
        journal.sync(journal.append(frame))
        recovered.store.ingest(frame)
        if rotate_after is not None and k + 1 == rotate_after:
            journal.rotate()
    journal.close()
    state_dir.close()
    return recovered.store


def start(directory):
    state_dir = StateDir(directory, IDENTITY)
    try:
        recovered, journal = state_dir.recover(empty)
    except BaseException:
        state_dir.close()
        raise
    journal.close()
    state_dir.close()
    return recovered, journal


def entry_offsets(path) -> list[int]:
    """Byte offset of each entry after the header (from the framing itself)."""
    data, pos = path.read_bytes(), len(MAGIC)
    out = []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        out.append(pos)
        pos += 8 + length
    return out[1:]  # the first framed payload is the header


# ---------------------------------------------------------------- the log


def test_a_flipped_byte_mid_segment_loses_one_batch_says_so_and_keeps_the_file(tmp_path, steps):
    write_log(tmp_path, steps[:5])
    path = segment_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[entry_offsets(path)[1] + 200] ^= 0xFF  # inside the second batch's payload
    path.write_bytes(bytes(data))
    recovered, _ = start(tmp_path)
    assert recovered.tick_count == 4 and recovered.lost_entries == 1  # the three after it are kept
    (damage,) = recovered.damage
    assert damage["kind"] == "corrupt" and damage["offset"] == entry_offsets(path)[1]
    assert path.read_bytes() == bytes(data)  # never cut: the evidence stays
    copies = [p.name for p in (tmp_path / "damaged").iterdir() if p.name.startswith("log-00000001.wal.")]
    assert len(copies) == 1 and ledger(tmp_path)[0]["action"] == "copied"
    report = inspect(tmp_path)
    assert report.starts and report.segments[0].damage[0]["kind"] == "corrupt"


def test_a_torn_tail_is_skipped_as_never_acknowledged_without_cutting(tmp_path, steps):
    write_log(tmp_path, steps[:3])
    path = segment_path(tmp_path, 1)
    whole = path.read_bytes()
    path.write_bytes(whole + whole[-500:-100])  # a partial entry, as a crash mid-write leaves
    recovered, _ = start(tmp_path)
    assert recovered.tick_count == 3 and recovered.truncated_bytes == 400 and recovered.lost_entries == 0
    assert path.read_bytes() == whole + whole[-500:-100]


def test_damage_in_an_older_segment_does_not_stop_the_later_ones(tmp_path, steps):
    write_log(tmp_path, steps[:3], rotate_after=2)
    path = segment_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # the last batch of segment 1
    path.write_bytes(bytes(data))
    recovered, _ = start(tmp_path)
    assert recovered.tick_count == 2 and recovered.lost_entries == 1  # segment 2's batch is read


@pytest.mark.parametrize("content", [b"", MAGIC[:4], MAGIC + b"\x10\x00\x00\x00"], ids=["empty", "magic", "header"])
def test_a_segment_cut_before_its_header_is_set_aside_and_its_number_not_reused(tmp_path, steps, content):
    live = write_log(tmp_path, steps[:3])
    segment_path(tmp_path, 2).write_bytes(content)  # a crash between creating a segment and its header
    recovered, journal = start(tmp_path)
    assert recovered.tick_count == 3 and recovered.set_aside[0].startswith("log-00000002.wal.")
    np.testing.assert_array_equal(recovered.store.state()["sum"], live.state()["sum"])
    assert journal.segment == 3 and segments(tmp_path) == [1, 3]
    recovered, journal = start(tmp_path)  # and the next start is clean
    assert recovered.set_aside == [] and journal.segment == 4


def test_a_damaged_header_over_acknowledged_entries_is_refused_then_repaired(tmp_path, steps):
    write_log(tmp_path, steps[:4])
    path = segment_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="damaged segment header.*valid entries after it.*state repair"):
        start(tmp_path)
    assert not inspect(tmp_path).starts
    done = repair(tmp_path)
    assert any("4 batches" in line for line in done)
    recovered, _ = start(tmp_path)
    assert recovered.tick_count == 0  # nothing left to replay, and the ledger says what was given up
    assert [line["records_lost"] for line in ledger(tmp_path) if line["action"] == "moved"] == [
        sum(f.height for f in steps[:4])
    ]


def test_a_full_disk_at_rotation_keeps_writing_the_old_segment_and_never_reuses_a_number(tmp_path, steps):
    journal = Journal(tmp_path, {"format": 1}, fsync=False, first_segment=1)
    real = journal._create
    calls = []

    def full(number):
        calls.append(number)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(number)

    journal._create = full
    with pytest.raises(StateError, match="cannot start log segment 2"):
        journal.rotate()
    journal.sync(journal.append(steps[0]))  # still writing segment 1
    assert journal.segment == 1 and segments(tmp_path) == [1]
    assert journal.rotate() == 3 and calls == [2, 3]  # 2 is never used again
    journal.close()


def test_a_failed_snapshot_write_leaves_no_temporary_file_and_the_old_snapshot_in_force(tmp_path, steps, monkeypatch):
    state_dir = StateDir(tmp_path, IDENTITY)
    recovered, journal = state_dir.recover(empty)
    for frame in steps[:3]:
        journal.sync(journal.append(frame))
        recovered.store.ingest(frame)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError):
        state_dir.write_snapshot(journal.rotate(), recovered.store.state(), {"tick_count": 3, "records": 15})
    monkeypatch.undo()
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / SNAPSHOT_META).exists()
    journal.close()
    state_dir.close()
    again, _ = start(tmp_path)
    assert again.tick_count == 3  # replayed from both segments


# ---------------------------------------------------------------- snapshots


def snapshot_folder(tmp_path, steps):
    state_dir = StateDir(tmp_path, IDENTITY)
    recovered, journal = state_dir.recover(empty)
    for frame in steps[:4]:
        journal.sync(journal.append(frame))
        recovered.store.ingest(frame)
    state_dir.write_snapshot(journal.rotate(), recovered.store.state(), {"tick_count": 4, "records": 20})
    for frame in steps[4:6]:
        journal.sync(journal.append(frame))
        recovered.store.ingest(frame)
    journal.close()
    state_dir.close()
    return recovered.store


def test_a_damaged_snapshot_is_a_clear_refusal_not_a_traceback_and_repair_starts_from_the_log(tmp_path, steps):
    snapshot_folder(tmp_path, steps)
    (npz,) = tmp_path.glob("snapshot-*.npz")
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(StateError, match=r"damaged window snapshot \(BadZipFile.*state repair"):
        start(tmp_path)
    repair(tmp_path)
    recovered, _ = start(tmp_path)
    assert recovered.tick_count == 2  # what the log still holds; the ledger names the lost segment
    assert any(line["action"] == "accepted_gap" for line in ledger(tmp_path))
    assert (tmp_path / "damaged").is_dir() and not list(tmp_path.glob("snapshot-*.npz"))


def test_a_missing_snapshot_description_cannot_drop_records_silently_and_repair_rebuilds_it(tmp_path, steps):
    live = snapshot_folder(tmp_path, steps)
    (tmp_path / SNAPSHOT_META).unlink()
    with pytest.raises(StateError, match="no snapshot.json, yet the log starts at segment 2"):
        start(tmp_path)
    result = CliRunner().invoke(main, ["state", "check", str(tmp_path)])
    assert result.exit_code == 1 and "refuses" in result.output
    result = CliRunner().invoke(main, ["state", "repair", str(tmp_path)])
    assert result.exit_code == 0 and "rebuilt snapshot.json" in result.output
    recovered, _ = start(tmp_path)
    for key, value in live.state().items():
        np.testing.assert_array_equal(recovered.store.state()[key], value, err_msg=key)


# ---------------------------------------------------------------- time and scale


def record(server: str, timestamp: str, cpu: float = 42.0) -> dict:
    return {"timestamp": timestamp, "server_name": server, "cpu_pct": cpu, "mem_pct": 55.0}


def iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat()


NOW = 1_767_225_600.0  # 2026-01-01


def test_a_future_dated_record_is_refused_and_cannot_evict_the_fleet():
    ingestor = Ingestor(WindowStore(24, c.METRIC_NAMES), None, clock=lambda: NOW)
    assert ingestor.feed([record(f"s{i}", iso(NOW - 300)) for i in range(10)]).status == 200
    outcome = ingestor.feed([record("intruder", iso(NOW + 9 * 3600)), record("s0", iso(NOW))])
    assert outcome.status == 422 and outcome.body["records_added"] == 1
    assert "ahead of the daemon's clock" in outcome.body["rejected"][0]["error"]
    assert len(ingestor.store.servers) == 10 and "intruder" not in ingestor.store.servers
    later = ingestor.feed([record("s1", iso(NOW + 100))])  # skew within the default 300 s
    assert later.status == 200 and later.body["status"] == "success"


def test_a_record_older_than_its_window_is_rejected_by_name_never_answered_success():
    ingestor = Ingestor(WindowStore(24, c.METRIC_NAMES), None, clock=lambda: NOW)
    ingestor.feed([record("a", iso(NOW))])
    outcome = ingestor.feed([record("a", iso(NOW - 30 * 300)), record("a", iso(NOW - 300))])
    assert outcome.status == 422 and outcome.body["status"] == "partial"
    assert outcome.body["records_added"] == 1 and outcome.body["too_old"] == 1
    (issue,) = outcome.body["rejected"]
    assert issue["index"] == 0 and "before this server's newest" in issue["error"]


def test_idle_servers_are_evicted_by_the_wall_clock_not_by_data_time():
    clock = [NOW]
    ingestor = Ingestor(WindowStore(24, c.METRIC_NAMES), None, clock=lambda: clock[0])
    ingestor.feed([record("replayed", "2024-01-01T00:00:00Z"), record("quiet", "2024-01-01T00:00:00Z")])
    clock[0] += 3600
    ingestor.feed([record("replayed", "2024-01-01T00:05:00Z")])  # old data, sent just now: live
    assert ingestor.evict_idle(1800) == ["quiet"]
    assert ingestor.store.servers == ["replayed"] and ingestor.counters.evicted_idle == 1


def test_at_capacity_the_least_recently_sent_server_goes_and_a_batch_never_evicts_itself():
    store = WindowStore(6, ("cpu_pct",), max_servers=3)

    def rows(*names):
        n = len(names)
        frame = {"timestamp": [c.step_time(6_000_000)] * n, "server_name": list(names), "cpu_pct": [1.0] * n}
        return c.validate(pl.DataFrame(frame))

    store.ingest(rows("a", "b", "c"))
    store.ingest(rows("a"))
    report = store.ingest(rows("d"))
    assert report.evicted == ["b"] and store.servers == ["c", "a", "d"]
    report = store.ingest(rows("e", "f", "g", "h"))
    assert report.refused == ["h"] and sorted(store.servers) == ["e", "f", "g"]


def test_overflowing_offsets_and_conflicting_aliases_are_refused_per_record():
    batch = validate_records(
        [
            record("a", "9999-12-31T23:59:59-05:00"),
            record("b", "0001-01-01T00:00:00+05:00"),
            {**record("c", "2025-01-01T00:00:00Z"), "cpu_percent": 43.0},
            record("d", "2025-01-01T00:00:00Z"),
        ]
    )
    assert batch.accepted == [3]
    reasons = {i.index: i.reason for i in batch.rejected}
    assert "must lie between" in reasons[0] and "must lie between" in reasons[1]
    assert "conflicts with cpu_pct=42.0" in reasons[2]
    same = validate_records([{**record("e", "2025-01-01T00:00:00Z"), "cpu_percent": 42.0}])
    assert same.rejected == [] and same.frame["cpu_pct"].to_list() == [42.0]  # agreeing aliases are fine


def test_state_check_of_a_healthy_folder_passes(tmp_path, steps):
    write_log(tmp_path, steps[:2])
    result = CliRunner().invoke(main, ["state", "check", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["starts"] and doc["segments"][0]["batches"] == 2
    assert os.path.isdir(tmp_path)


def test_a_crash_at_any_byte_keeps_exactly_the_whole_batches_before_it(tmp_path, steps):
    """Kill -9 at 200 random points of a write: what is whole is recovered, nothing else, nothing refused."""
    source = tmp_path / "source"
    write_log(source, steps[:12])
    whole = segment_path(source, 1).read_bytes()
    ends = [offset for offset in entry_offsets(segment_path(source, 1))[1:]] + [len(whole)]
    rng = np.random.default_rng(7)
    for k, cut in enumerate(sorted(rng.integers(0, len(whole) + 1, size=200))):
        folder = tmp_path / f"crash{k}"
        folder.mkdir()
        segment_path(folder, 1).write_bytes(whole[:cut])
        recovered, _ = start(folder)
        assert recovered.tick_count == sum(1 for end in ends if end <= cut), cut
        assert recovered.lost_entries == 0, cut  # a cut is torn, never "corrupt"
