"""The history archive on its own: buffer, flush as new files, retention, queries, export, failures."""

from __future__ import annotations

import errno
import os
import threading
import time
from datetime import UTC, date, datetime, timedelta
from multiprocessing import Pipe
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from workbench import contract as c
from workbench.cli import main
from workbench.errors import ConfigError
from workbench.forecast import Forecast
from workbench.inference.window import WindowStore
from workbench.service.archive import Archive
from workbench.service.archive_rows import SCHEMAS, alert_transitions
from workbench.service.cli import _history_dir
from workbench.service.horizon_points import HorizonPoints
from workbench.service.ingest import Ingestor
from workbench.service.worker import recv_frames, send_frames

MIDNIGHT = datetime(2025, 1, 6, tzinfo=UTC)
ORIGIN = int(MIDNIGHT.timestamp()) // c.STEP_SECONDS  # a forecast origin step at MIDNIGHT


def clock_at(when: datetime):
    return lambda: when.timestamp()


def metrics(start: datetime, count: int, servers=("a", "b"), step_minutes: int = 5) -> pl.DataFrame:
    """``count`` steps of every server from ``start`` (cpu_pct counts up, so rows are told apart)."""
    rows = [
        {c.TIMESTAMP: start + timedelta(minutes=step_minutes * k), c.SERVER: s, "cpu_pct": float(k + 100 * i)}
        for k in range(count)
        for i, s in enumerate(servers)
    ]
    return pl.DataFrame(
        rows, schema={c.TIMESTAMP: pl.Datetime("us", "UTC"), c.SERVER: pl.String, "cpu_pct": pl.Float64}
    )


def parts(folder: Path) -> dict[Path, tuple[int, int, int]]:
    """Every part file under ``folder`` with its inode, mtime and size."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("part-*.parquet")}


@pytest.fixture
def archive(tmp_path) -> Archive:
    return Archive(tmp_path / "history", retention_days=30, clock=clock_at(MIDNIGHT + timedelta(hours=1)))


def test_rows_are_queryable_while_buffered_and_after_a_flush_across_a_date_boundary(archive):
    archive.add_metrics(metrics(MIDNIGHT - timedelta(minutes=10), 4))  # 23:50 .. 00:05, two dates
    buffered, truncated = archive.query("metrics")
    assert buffered.height == 8 and not truncated and not parts(archive.directory)
    assert archive.flush() == 8
    folders = sorted(p.parent.name for p in parts(archive.directory))
    assert folders == ["date=2025-01-05", "date=2025-01-06"]
    archive.add_metrics(metrics(MIDNIGHT + timedelta(minutes=10), 1, servers=("a",)))  # buffered, not yet written
    rows, _ = archive.query("metrics", servers=["a"], start=MIDNIGHT, end=MIDNIGHT + timedelta(hours=1))
    assert rows[c.TIMESTAMP].to_list() == [MIDNIGHT, MIDNIGHT + timedelta(minutes=5), MIDNIGHT + timedelta(minutes=10)]
    assert rows[c.SERVER].unique().to_list() == ["a"] and rows.columns == list(SCHEMAS["metrics"])
    everything, _ = archive.query("metrics")
    assert everything.height == 9 and everything[c.TIMESTAMP].is_sorted()
    cut, truncated = archive.query("metrics", limit=3)
    assert truncated and cut.equals(everything.head(3))


def test_a_query_opens_only_the_date_partitions_its_range_touches(archive):
    archive.add_metrics(metrics(MIDNIGHT - timedelta(days=2), 1))
    archive.add_metrics(metrics(MIDNIGHT, 1))
    archive.flush()
    old = next(p for p in parts(archive.directory) if "2025-01-04" in str(p))
    old.write_bytes(b"not parquet")  # would fail any read that opened it
    rows, _ = archive.query("metrics", start=MIDNIGHT - timedelta(hours=1), end=MIDNIGHT + timedelta(hours=1))
    assert rows.height == 2
    with pytest.raises(pl.exceptions.PolarsError):
        archive.query("metrics", start=MIDNIGHT - timedelta(days=3))


def test_flushes_add_new_files_and_never_touch_existing_ones(archive):
    archive.add_metrics(metrics(MIDNIGHT, 2))
    archive.flush()
    before = parts(archive.directory)
    assert len(before) == 1
    for k in range(3):  # same date partition again and again
        archive.add_metrics(metrics(MIDNIGHT + timedelta(minutes=30 + k), 1))
        archive.flush()
    after = parts(archive.directory)
    assert len(after) == 4 and all(after[path] == stat for path, stat in before.items())
    assert not list(archive.directory.rglob("*.tmp")) and archive.query("metrics")[0].height == 10
    assert archive.flush() == 0 and parts(archive.directory) == after  # nothing buffered: no empty file


def test_retention_deletes_whole_partitions_before_the_newest_data(tmp_path):
    folder = tmp_path / "history"
    first = Archive(folder, retention_days=3, clock=clock_at(datetime(2026, 6, 1, tzinfo=UTC)))
    first.add_metrics(metrics(datetime(2025, 1, 1, tzinfo=UTC), 10, step_minutes=24 * 60))  # 1 .. 10 January
    first.flush()  # a replay of old data: kept by its own newest date, not by today's
    kept = sorted({p.parent.name for p in parts(folder)})
    assert kept == [f"date=2025-01-{d:02d}" for d in range(7, 11)]
    assert first.rows_expired == 12 and first.rows_written["metrics"] == 8
    second = Archive(folder, retention_days=1, clock=clock_at(datetime(2026, 6, 1, tzinfo=UTC)))
    second.start()  # the first flush applies the shorter retention to what is on disk
    second.close()
    assert sorted({p.parent.name for p in parts(folder)}) == ["date=2025-01-09", "date=2025-01-10"]
    assert second.partitions_deleted == 2 and not list((folder / "metrics").glob(".*"))


def test_rows_from_the_future_cannot_expire_todays_partitions(tmp_path):
    today = datetime(2025, 1, 6, 12, tzinfo=UTC)
    archive = Archive(tmp_path / "h", retention_days=2, clock=clock_at(today))
    archive.add_metrics(metrics(today, 1))
    archive.add_metrics(metrics(datetime(2099, 1, 1, tzinfo=UTC), 1))
    archive.flush()
    assert {p.parent.name for p in parts(archive.directory)} == {"date=2025-01-06", "date=2099-01-01"}


def test_a_failed_flush_keeps_the_rows_buffered_and_feeding_going(tmp_path, monkeypatch):
    archive = Archive(tmp_path / "h", max_rows=30, clock=clock_at(MIDNIGHT))
    ingestor = Ingestor(WindowStore(24), None, clock=clock_at(MIDNIGHT), on_accepted=archive.add_metrics)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Archive, "_write", disk_full)
    records = [{"timestamp": f"2025-01-05T23:{m:02d}:00Z", "server_name": "a", "cpu_pct": 1.0} for m in range(10)]
    assert ingestor.feed(records).status == 200
    assert archive.flush() == 0 and archive.flush_failures == 1
    assert "No space left" in archive.problem() and "10 rows buffered" in archive.problem()
    assert archive.query("metrics")[0].height == 10  # still readable from memory
    for server in ("b", "c", "d"):  # the feed goes on; past max_rows the oldest rows go, counted
        assert ingestor.feed([{**r, "server_name": server} for r in records]).status == 200
    archive.flush()
    assert archive.rows_dropped == 10 and archive.status()["buffered_rows"]["metrics"] == 30
    monkeypatch.undo()  # the disk has room again
    assert archive.flush() == 30 and archive.problem() is None and archive.status()["error"] is None
    assert archive.query("metrics")[0].height == 30 and len(parts(archive.directory)) == 1


def test_refused_and_unstored_records_are_not_archived(tmp_path):
    archive = Archive(tmp_path / "h", clock=clock_at(MIDNIGHT))
    ingestor = Ingestor(WindowStore(4), None, clock=clock_at(MIDNIGHT), on_accepted=archive.add_metrics)
    good = {"timestamp": "2025-01-05T23:00:00Z", "server_name": "a", "cpu_pct": 1.0}
    outcome = ingestor.feed([good, {**good, "cpu_pct": 500.0}, {**good, "server_name": "bad name!"}])
    assert outcome.body["records_added"] == 1
    ingestor.feed([{**good, "timestamp": "2025-01-05T10:00:00Z"}])  # older than the 4-step window: not stored
    rows, _ = archive.query("metrics")
    assert rows[c.TIMESTAMP].to_list() == [datetime(2025, 1, 5, 23, tzinfo=UTC)] and rows["cpu_pct"].to_list() == [1.0]


def forecast(servers=("a", "b"), last_step: int = ORIGIN, horizon: int = 96) -> Forecast:
    n, m = len(servers), 2
    quantiles = np.arange(n * m * horizon * 3, dtype=np.float64).reshape(n, m, horizon, 3)
    steps = np.full(n, last_step, dtype=np.int64)
    return Forecast(list(servers), ["web_api"] * n, ("cpu_pct", "mem_pct"), steps, quantiles, np.zeros((n, m)))


def test_horizon_points_read_the_forecast_at_its_steps_and_cross_the_worker_pipe_as_raw_bytes():
    result = forecast()
    points = HorizonPoints.of(result)
    assert points.steps == (6, 12, 24, 48, 96) and points.values.dtype == np.float32
    np.testing.assert_array_equal(points.values[1, 0, 2], result.quantiles[1, 0, 23])  # b, cpu_pct, 2 h ahead
    mine, theirs = Pipe()
    send_frames(mine, {"points": points.header()}, points.blobs())
    header, blobs = recv_frames(theirs)
    back = HorizonPoints.from_wire(header["points"], blobs)
    assert back is not None and back.servers == points.servers and back.levels == points.levels
    np.testing.assert_array_equal(back.values, points.values)
    np.testing.assert_array_equal(back.origin_steps, points.origin_steps)
    assert HorizonPoints.of(forecast(horizon=30)).steps == (6, 12, 24)


def test_forecasts_are_archived_once_per_origin_with_their_target_times(archive):
    archive.add_result(HorizonPoints.of(forecast()), [], c.step_time(ORIGIN).isoformat())
    archive.add_result(HorizonPoints.of(forecast()), [], c.step_time(ORIGIN).isoformat())  # re-forecast: late data
    later = HorizonPoints.of(forecast(servers=("a",), last_step=ORIGIN + 1))
    archive.add_result(later, [], c.step_time(ORIGIN + 1).isoformat())
    rows, _ = archive.query("forecasts")
    assert rows.height == 2 * 2 * 5 + 2 * 5
    row = rows.filter((pl.col(c.SERVER) == "b") & (pl.col("metric") == "mem_pct") & (pl.col("step") == 12)).row(
        0, named=True
    )
    assert row[c.TIMESTAMP] == c.step_time(ORIGIN) and row["target_time"] == c.step_time(ORIGIN + 12)
    expected = forecast().quantiles[1, 1, 11]
    assert [row["p10"], row["p50"], row["p90"]] == pytest.approx(expected.tolist())


def alert(server: str, severity: str = "warning", metric: str = "cpu_pct") -> dict:
    return {
        "server": server,
        "metric": metric,
        "severity": severity,
        "predicted_value": 91.0,
        "threshold": 90.0,
        "minutes_ahead": 30,
        "probability": None,
        "rule": "band_edge",
        "summary": "cpu_pct may pass 90",
    }


def test_alert_transitions_compare_consecutive_alert_lists():
    at = when = MIDNIGHT
    raised = alert_transitions([], [alert("a"), alert("b", "critical")], at, when)
    assert raised["transition"].to_list() == ["raised", "raised"]
    changed = alert_transitions([alert("a"), alert("b", "critical")], [alert("a", "critical"), alert("b")], at, when)
    assert changed.select("transition", "severity", "previous_severity").rows() == [
        ("escalated", "critical", "warning"),
        ("deescalated", "warning", "critical"),
    ]
    gone = alert_transitions([alert("a", "critical")], [], at, when)
    assert gone.select("transition", "severity", "previous_severity").rows() == [("resolved", None, "critical")]
    assert alert_transitions([alert("a")], [alert("a")], at, when).height == 0


def test_the_export_command_writes_parquet_and_csv_that_read_back_equal(archive, tmp_path):
    archive.add_metrics(metrics(MIDNIGHT - timedelta(minutes=10), 4))
    archive.add_result(HorizonPoints.of(forecast()), [alert("a")], c.step_time(ORIGIN).isoformat())
    archive.flush()
    runner, folder = CliRunner(), str(archive.directory)
    for kind in ("metrics", "forecasts", "alerts"):
        expected, _ = archive.query(kind, servers=["a"])
        assert expected.height
        for suffix in ("parquet", "csv"):
            out = tmp_path / f"{kind}.{suffix}"
            args = ["history", "export", "--history-dir", folder, "--kind", kind, "--server", "a", "--out", str(out)]
            done = runner.invoke(main, args)
            assert done.exit_code == 0, done.output
            assert f"wrote {expected.height} {kind} rows" in done.output
            back = pl.read_parquet(out) if suffix == "parquet" else pl.read_csv(out, schema=SCHEMAS[kind])
            assert back.equals(expected), (kind, suffix)
    ranged = tmp_path / "range.csv"
    args = ["history", "export", "--history-dir", folder, "--kind", "metrics", "--start", "2025-01-06T00:00:00",
            "--out", str(ranged)]  # fmt: skip
    assert runner.invoke(main, args).exit_code == 0 and pl.read_csv(ranged).height == 4
    bad = runner.invoke(main, [*args[:-2], "--end", "yesterday", "--out", str(ranged)])
    assert bad.exit_code == 2 and "--end='yesterday' must be an ISO 8601 time" in bad.output
    missing = runner.invoke(main, ["history", "export", "--history-dir", str(tmp_path / "none"), "--kind", "alerts",
                                   "--out", str(ranged)])  # fmt: skip
    assert missing.exit_code == 1 and "no history archive at" in missing.output


def test_settings_refuse_bad_values_and_the_history_folder_defaults_to_the_state_folder(tmp_path):
    with pytest.raises(ConfigError, match="retention_days=0 must be > 0"):
        Archive(tmp_path / "h", retention_days=0)
    assert _history_dir(None, Path("state"), False) == Path("state/history")
    assert _history_dir(Path("elsewhere"), Path("state"), False) == Path("elsewhere")
    assert _history_dir(None, None, False) is None and _history_dir(Path("x"), Path("state"), True) is None
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "--history-dir" in help_text and "--history-days" in help_text and "--no-history" in help_text


def test_partitions_are_named_by_utc_date(archive):
    late = datetime(2025, 1, 6, 23, 59, tzinfo=UTC)
    archive.add_metrics(metrics(late, 1, servers=("a",)))
    archive.flush()
    (path,) = parts(archive.directory)
    assert path.parent.name == "date=2025-01-06" and date.fromisoformat(path.parent.name[5:]) == late.date()
    assert os.path.basename(path).startswith("part-")


def test_a_restarted_archive_repeats_no_forecast_and_no_alert(tmp_path):
    folder, now = tmp_path / "h", clock_at(MIDNIGHT)
    first = Archive(folder, clock=now)
    first.add_result(
        HorizonPoints.of(forecast()), [alert("a", "critical"), alert("b")], c.step_time(ORIGIN).isoformat()
    )
    first.close()
    second = Archive(folder, clock=now)
    second.start()
    try:  # the restarted daemon forecasts its last step again and its tracker raises the same alerts again
        second.add_result(
            HorizonPoints.of(forecast()), [alert("a", "critical"), alert("b")], c.step_time(ORIGIN).isoformat()
        )
        assert second.query("forecasts")[0].height == 2 * 2 * 5 and second.query("alerts")[0].height == 2
        second.add_result(None, [alert("a", "critical")], c.step_time(ORIGIN + 1).isoformat())
        changes, _ = second.query("alerts", start=c.step_time(ORIGIN + 1))
        assert changes.select(c.SERVER, "transition", "previous_severity").rows() == [("b", "resolved", "warning")]
    finally:
        second.close()


def test_readers_see_every_row_exactly_once_while_a_flush_writes_files(archive, monkeypatch):
    for day in range(6):
        archive.add_metrics(metrics(MIDNIGHT - timedelta(days=day), 3))
    write = Archive._write

    def slow_write(self, *args):
        time.sleep(0.02)
        write(self, *args)

    monkeypatch.setattr(Archive, "_write", slow_write)
    flusher = threading.Thread(target=archive.flush)
    flusher.start()
    seen = set()
    while flusher.is_alive():
        seen.add(archive.query("metrics")[0].height)
    flusher.join()
    assert seen <= {36} and archive.query("metrics")[0].height == 36 and len(parts(archive.directory)) == 6
