from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from workbench import contract as c
from workbench.inference.window import WindowStore

T0 = datetime(2025, 1, 6, tzinfo=UTC)
METRICS = ("cpu_pct", "latency_ms")


def rows(server: str, seconds: list[int], cpu: list[float | None], latency: list[float | None] | None = None):
    latency = latency if latency is not None else [1.0] * len(seconds)
    return c.validate(
        pl.DataFrame(
            {
                "timestamp": [T0 + timedelta(seconds=s) for s in seconds],
                "server_name": [server] * len(seconds),
                "cpu_pct": cpu,
                "latency_ms": latency,
            },
            schema_overrides={"cpu_pct": pl.Float64, "latency_ms": pl.Float64},
        )
    )


def steps(n: int, start: int = 0) -> list[int]:
    return [(start + i) * c.STEP_SECONDS for i in range(n)]


def read(store: WindowStore, server: str, length: int = 100) -> np.ndarray:
    w = store.windows([server], length)
    return w.values[0, : w.lengths[0]]


def test_samples_within_a_step_use_each_metrics_aggregation():
    store = WindowStore(capacity=10, metrics=METRICS)
    report = store.ingest(rows("a", [0, 60, 120, 299], [10.0, 20.0, None, 30.0], [5.0, 50.0, 7.0, 1.0]))
    assert report.samples == 4 and report.steps == 1 and report.new_servers == ["a"]
    np.testing.assert_allclose(read(store, "a"), [[20.0, 50.0]])  # mean ignoring the gap, max


def test_late_samples_merge_into_their_step_and_duplicates_change_nothing():
    store = WindowStore(capacity=10, metrics=METRICS)
    store.ingest(rows("a", steps(6), [float(i) for i in range(6)]))
    store.ingest(rows("a", [2 * c.STEP_SECONDS + 10], [4.0]))  # late, out of order
    assert read(store, "a")[2, 0] == pytest.approx(3.0)
    before = read(store, "a").copy()
    store.ingest(rows("a", steps(6), [float(i) for i in range(6)]))  # the same batch again
    store.ingest(rows("a", [2 * c.STEP_SECONDS + 10], [4.0]))
    np.testing.assert_allclose(read(store, "a"), before)
    assert store.history("a") == 6


def test_short_gaps_are_carried_forward_and_reported():
    store = WindowStore(capacity=20, metrics=METRICS, max_gap_steps=3)
    store.ingest(rows("a", steps(4), [1.0, 2.0, 3.0, 4.0]))
    report = store.ingest(rows("a", steps(2, start=7), [8.0, 9.0]))
    assert report.gap_steps == {"a": 3} and report.restarted == []
    assert store.history("a") == 9
    np.testing.assert_allclose(read(store, "a")[:, 0], [1, 2, 3, 4, 4, 4, 4, 8, 9])


def test_a_long_gap_restarts_the_history():
    store = WindowStore(capacity=20, metrics=METRICS, max_gap_steps=3)
    store.ingest(rows("a", steps(10), [1.0] * 10))
    report = store.ingest(rows("a", steps(2, start=15), [5.0, 6.0]))
    assert report.restarted == ["a"] and store.history("a") == 2
    np.testing.assert_allclose(read(store, "a")[:, 0], [5.0, 6.0])
    # Late samples that close the gap join the two runs again.
    store.ingest(rows("a", steps(1, start=10), [7.0]))  # the gap is still 4 steps long
    assert store.history("a") == 2
    store.ingest(rows("a", steps(4, start=11), [8.0] * 4))
    assert store.history("a") == 17


def test_samples_older_than_the_window_are_dropped_and_history_is_capped():
    store = WindowStore(capacity=5, metrics=METRICS)
    store.ingest(rows("a", steps(12), [float(i) for i in range(12)]))
    assert store.history("a") == 5
    np.testing.assert_allclose(read(store, "a")[:, 0], [7, 8, 9, 10, 11])
    assert store.ingest(rows("a", steps(1, start=3), [99.0])).too_old == 1
    np.testing.assert_allclose(read(store, "a")[:, 0], [7, 8, 9, 10, 11])


def test_a_metric_missing_in_some_steps_is_filled_and_one_never_seen_stays_nan():
    store = WindowStore(capacity=10, metrics=(*METRICS, "mem_pct"))
    frame = rows("a", steps(4), [None, 2.0, None, 4.0], [None] * 4).with_columns(pl.lit(1.0).alias("mem_pct"))
    store.ingest(frame)
    values = read(store, "a")
    np.testing.assert_allclose(values[:, 0], [2.0, 2.0, 2.0, 4.0])  # leading value back-filled
    assert np.isnan(values[:, 1]).all() and (values[:, 2] == 1.0).all()


def test_a_step_without_any_value_is_not_history():
    store = WindowStore(capacity=10, metrics=METRICS)
    store.ingest(rows("a", steps(3), [None, 1.0, 2.0], [None, 1.0, 1.0]))
    assert store.history("a") == 2


def test_windows_are_left_aligned_with_their_lengths():
    store = WindowStore(capacity=10, metrics=METRICS)
    store.ingest(pl.concat([rows("a", steps(8), [1.0] * 8), rows("b", steps(3, start=5), [2.0] * 3)]))
    w = store.windows(["a", "b"], 6)
    t0_step = int(T0.timestamp()) // c.STEP_SECONDS
    assert w.lengths.tolist() == [6, 3] and (w.last_step - t0_step).tolist() == [7, 7]
    assert w.values.shape == (2, 6, 2)
    assert (w.values[1, 3:] == 0).all() and (w.values[1, :3, 0] == 2.0).all()
    assert w.profiles == ["generic", "generic"]


def test_memory_stays_bounded_for_a_fleet_that_keeps_adding_servers():
    store = WindowStore(capacity=12, metrics=METRICS, max_servers=40)
    evicted = 0
    for wave in range(25):  # 500 distinct servers, 20 new ones per step
        batch = c.validate(
            pl.DataFrame(
                {
                    "timestamp": [T0 + timedelta(seconds=wave * c.STEP_SECONDS)] * 20,
                    "server_name": [f"s{wave}-{i}" for i in range(20)],
                    "cpu_pct": [1.0] * 20,
                }
            )
        )
        evicted += len(store.ingest(batch).evicted)
    assert len(store.servers) <= 40
    assert evicted == 500 - len(store.servers)
    assert store.nbytes <= 64 * 12 * 2 * 20  # rows x capacity x metrics x bytes per cell


def test_idle_servers_are_evicted_by_arrival_not_by_data_time():
    store = WindowStore(capacity=6, metrics=METRICS)
    store.ingest(pl.concat([rows("old", steps(2), [1.0, 1.0]), rows("new", steps(2), [1.0, 1.0])]))
    report = store.ingest(rows("new", steps(1, start=9), [1.0]))
    assert report.evicted == [] and store.servers == ["old", "new"]  # a step far ahead evicts nobody
    assert store.evict_idle(store.tick) == ["old"] and store.servers == ["new"]


def _reference_read(store: WindowStore, slot: int, length: int) -> tuple[int, np.ndarray]:
    """History and window of one ring, element by element: the spec the compiled reader must meet."""
    cap, last = store.capacity, int(store._last[slot])
    present = [s >= 0 and store._cnt[slot, s % cap].any() for s in range(last - cap + 1, last + 1)]
    start, prev = -1, -1
    for t, here in enumerate(present):
        if here:
            if prev < 0 or t - prev - 1 > store.max_gap_steps:
                start = t
            prev = t
    history = cap - start if start >= 0 else 0
    n = min(history, length)
    out = np.zeros((length, len(store.metrics)))
    for m in range(len(store.metrics)):
        column = []
        for step in range(last - n + 1, last + 1):
            pos, count = step % cap, store._cnt[slot, step % cap, m]
            value = store._max[slot, pos, m] if store._is_max[m] else store._sum[slot, pos, m] / max(count, 1)
            column.append(value if count else np.nan)
        seen = [v for v in column if not np.isnan(v)]
        carried = seen[0] if seen else np.nan  # leading gaps take the first value
        for t, v in enumerate(column):
            carried = carried if np.isnan(v) else v
            out[t, m] = carried
    return history, out


@pytest.mark.parametrize("seed", range(6))
def test_histories_and_windows_equal_an_element_by_element_reading(seed):
    rng = np.random.default_rng(seed)
    store = WindowStore(capacity=24, metrics=METRICS, max_gap_steps=int(rng.integers(0, 4)))
    for server in range(12):
        kept = rng.random(60) < rng.uniform(0.3, 1.0)  # gaps of every length, some past the limit
        seconds = [s for s, k in zip(steps(60, start=int(rng.integers(0, 30))), kept, strict=True) if k]
        cpu = [None if rng.random() < 0.2 else float(v) for v in rng.uniform(0, 100, len(seconds))]
        store.ingest(rows(f"s{server}", seconds, cpu, [float(v) for v in rng.uniform(1, 50, len(seconds))]))
    names = sorted(store.histories())
    length = int(rng.integers(1, 30))
    windows = store.windows(names, length)
    for i, name in enumerate(names):
        history, expected = _reference_read(store, store._index[name], length)
        assert store.histories()[name] == history
        np.testing.assert_array_equal(windows.values[i], expected[: windows.values.shape[1]])


def _reference_run_lengths(slots, last, cnt, max_gap):
    """The rule spelled out: steps from the start of the last run (gaps <= max_gap inside it) to the end."""
    capacity, out = cnt.shape[1], []
    for slot in slots:
        start, prev = -1, -1
        for t in range(capacity):
            step = last[slot] - capacity + 1 + t
            if step >= 0 and (cnt[slot, step % capacity] > 0).any():
                if prev < 0 or t - prev - 1 > max_gap:
                    start = t
                prev = t
        out.append(capacity - start if start >= 0 else 0)
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("kernel", ["_run_lengths", "_run_lengths_compiled"])
def test_run_lengths_follow_the_rule_on_random_rings(kernel):
    from workbench.inference import window

    run_lengths = getattr(window, kernel)

    rng = np.random.default_rng(0)
    for _ in range(300):
        servers, capacity, metrics = (int(rng.integers(1, n)) for n in (9, 30, 4))
        cnt = (rng.random((servers, capacity, metrics)) < rng.random()).astype(np.int32)
        last = rng.integers(-1, 3 * capacity, size=servers)
        slots = rng.permutation(servers)[: int(rng.integers(1, servers + 1))].astype(np.int64)
        gap = int(rng.integers(0, 5))
        out = np.empty(len(slots), dtype=np.int64)
        run_lengths(slots, last, cnt, gap, out)
        np.testing.assert_array_equal(out, _reference_run_lengths(slots, last, cnt, gap))


def test_reading_a_few_windows_in_numpy_gives_the_compiled_kernels_values():
    from workbench.inference.window import _read, _read_few

    rng = np.random.default_rng(1)
    for _ in range(200):
        servers, capacity, metrics = (int(rng.integers(1, n)) for n in (6, 25, 4))
        cnt = (rng.random((servers, capacity, metrics)) < rng.random()).astype(np.int32) * rng.integers(1, 3)
        sums = rng.random((servers, capacity, metrics)) * cnt
        maxes = rng.random((servers, capacity, metrics))
        is_max = rng.random(metrics) < 0.5
        last = rng.integers(capacity, 3 * capacity, size=servers)
        slots = rng.permutation(servers)[: int(rng.integers(1, servers + 1))].astype(np.int64)
        lengths = rng.integers(0, capacity + 1, size=len(slots))
        length = int(rng.integers(1, capacity + 2))
        lengths = np.minimum(lengths, length)
        expected, got = (np.full((len(slots), length, metrics), -7.0) for _ in range(2))
        _read(slots, lengths, last, sums, cnt, maxes, is_max, expected)
        _read_few(slots, lengths, last, sums, cnt, maxes, is_max, got)
        np.testing.assert_allclose(got, expected, equal_nan=True)
