"""The append log, window snapshots and recovery: nothing acknowledged is lost, nothing foreign is loaded."""

import json

import numpy as np
import polars as pl
import pytest

from workbench import contract as c
from workbench.inference.window import WindowStore
from workbench.service.journal import MAGIC, Journal, Segment, StateError, segment_path, segments
from workbench.service.state import SNAPSHOT_META, StateDir

IDENTITY = {"name": "b", "sha256": "abc", "targets": list(c.METRIC_NAMES), "max_encoder_length": 24}


def empty() -> WindowStore:
    return WindowStore(24, c.METRIC_NAMES)


def assert_same(a: WindowStore, b: WindowStore) -> None:
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    assert a.servers == b.servers


def feed(journal: Journal, store: WindowStore, frames: list[pl.DataFrame]) -> None:
    for frame in frames:
        journal.sync(journal.append(frame))
        store.ingest(frame)


def test_window_state_round_trip_is_exact(steps):
    store = empty()
    for frame in steps[:30]:
        store.ingest(frame)
    copy = WindowStore.from_state({k: v.copy() for k, v in store.state().items()})
    assert_same(store, copy)
    for frame in steps[30:40]:  # and both go on identically
        store.ingest(frame)
        copy.ingest(frame)
    assert_same(store, copy)


def test_window_state_refuses_inconsistent_arrays(steps):
    store = empty()
    store.ingest(steps[0])
    state = store.state()
    with pytest.raises(ValueError, match="lacks order"):
        WindowStore.from_state({k: v for k, v in state.items() if k != "order"})
    with pytest.raises(ValueError, match="'cnt'"):
        WindowStore.from_state({**state, "cnt": state["cnt"].astype(np.int64)})
    with pytest.raises(ValueError, match="disagree"):
        WindowStore.from_state({**state, "free": state["free"][:-1]})


def test_log_then_recovery_rebuilds_the_windows_exactly(tmp_path, steps):
    state_dir = StateDir(tmp_path, IDENTITY)
    recovered, journal = state_dir.recover(empty)
    assert recovered.tick_count == 0
    live = recovered.store
    feed(journal, live, steps[:20])
    journal.close()
    state_dir.close()  # as after kill -9: no snapshot was taken

    again = StateDir(tmp_path, IDENTITY)
    recovered, journal = again.recover(empty)
    assert recovered.replayed_batches == recovered.tick_count == 20
    assert recovered.records == sum(f.height for f in steps[:20])
    assert_same(live, recovered.store)
    journal.close()
    again.close()


def test_snapshot_then_log_replay_and_cleanup(tmp_path, steps):
    state_dir = StateDir(tmp_path, IDENTITY)
    recovered, journal = state_dir.recover(empty)
    live = recovered.store
    feed(journal, live, steps[:10])
    segment = journal.rotate()  # what Ingestor.start_snapshot does under the ingest lock
    state_dir.write_snapshot(segment, live.state(), {"tick_count": 10, "records": 50})
    feed(journal, live, steps[10:15])
    journal.close()
    state_dir.close()
    assert segments(tmp_path) == [segment]  # the segment before the snapshot is gone
    meta = json.loads((tmp_path / SNAPSHOT_META).read_text())
    assert meta["segment"] == segment and meta["contract_version"] == c.CONTRACT_VERSION
    assert meta["servers"] == live.servers and meta["bundle"] == IDENTITY

    again = StateDir(tmp_path, IDENTITY)
    recovered, journal = again.recover(empty)
    assert (recovered.snapshot_segment, recovered.replayed_batches, recovered.tick_count) == (segment, 5, 15)
    assert_same(live, recovered.store)
    journal.close()
    again.close()


def test_state_of_another_bundle_or_contract_is_refused(tmp_path, steps):
    state_dir = StateDir(tmp_path, IDENTITY)
    recovered, journal = state_dir.recover(empty)
    feed(journal, recovered.store, steps[:2])
    state_dir.write_snapshot(journal.rotate(), recovered.store.state(), {"tick_count": 2, "records": 10})
    journal.close()
    state_dir.close()
    reloaded = StateDir(tmp_path, {**IDENTITY, "sha256": "def"})  # other weights, same windows: a reload
    recovered, journal = reloaded.recover(empty)
    assert recovered.tick_count == 2
    journal.close()
    reloaded.close()
    other = StateDir(tmp_path, {**IDENTITY, "max_encoder_length": 48})
    with pytest.raises(StateError, match=r"another contract or bundle.*\n  bundle max_encoder_length: stored 24"):
        other.recover(empty)
    other.close()
    meta = json.loads((tmp_path / SNAPSHOT_META).read_text())
    meta["contract"]["step_seconds"] = 60
    (tmp_path / SNAPSHOT_META).write_text(json.dumps(meta))
    again = StateDir(tmp_path, IDENTITY)
    with pytest.raises(StateError, match="step_seconds: stored 60 != running 300"):
        again.recover(empty)
    again.close()


def test_a_state_folder_serves_one_daemon_at_a_time(tmp_path):
    first = StateDir(tmp_path, IDENTITY)
    with pytest.raises(StateError, match="in use by another daemon"):
        StateDir(tmp_path, IDENTITY)
    first.close()
    StateDir(tmp_path, IDENTITY).close()


def test_segments_are_framed_and_checksummed(tmp_path, steps):
    journal = Journal(tmp_path, {"format": 1}, fsync=False, first_segment=7)
    journal.append(steps[0])
    journal.close()
    path = segment_path(tmp_path, 7)
    assert path.read_bytes().startswith(MAGIC)
    segment = Segment(path)
    assert segment.header == {"format": 1, "segment": 7}
    (frame,) = list(segment.frames())
    assert frame.equals(steps[0]) and segment.torn_bytes == 0
    path.write_bytes(b"garbage")
    with pytest.raises(StateError, match="bad magic"):
        Segment(path)
