import json
import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from payloads import SEED_001_RECORD, SEED_004_RECORD

from workbench import contract as c
from workbench.errors import ContractError
from workbench.records import validate_records


def good_frame(n: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "timestamp": [datetime(2025, 1, 6, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(n)],
            "server_name": ["ppweb001"] * n,
            "cpu_pct": [10.0 + i for i in range(n)],
            "error_rate": [0.01] * n,
        }
    )


def issues_of(exc: pytest.ExceptionInfo[ContractError]) -> set[tuple[int | None, str]]:
    return {(i.index, i.field) for i in exc.value.issues}


def test_contract_json_round_trips_and_matches_itself():
    stored = json.loads(json.dumps(c.contract_json()))
    assert c.contract_differences(stored) == []
    assert stored["step_seconds"] == 300 and stored["horizon_steps"] == 96
    assert [m["name"] for m in stored["metrics"]] == list(c.METRIC_NAMES)


def test_contract_differences_name_the_changed_key():
    stored = c.contract_json()
    stored["step_seconds"] = 5
    stored["metrics"] = stored["metrics"][:-1]
    diffs = c.contract_differences(stored)
    assert any(d.startswith("step_seconds: stored 5 != running 300") for d in diffs)
    assert any(d.startswith("metrics:") for d in diffs)


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("ppml0001", "ml_compute"),
        ("ppdb001", "database"),
        ("PPWEB003", "web_api"),
        ("ppcon01", "conductor_mgmt"),
        ("ppetl002", "data_ingest"),
        ("pprisk001", "risk_analytics"),
        ("ppgen001", "generic"),
        ("prod-web-01", "generic"),
    ],
)
def test_profile_is_inferred_from_the_name_prefix(name, profile):
    assert c.infer_profile(name) == profile
    frame = c.validate(pl.DataFrame({"timestamp": [datetime(2025, 1, 1, tzinfo=UTC)], "server_name": [name]}))
    assert frame["profile"].to_list() == [profile]


def test_validate_returns_canonical_columns_and_types():
    out = c.validate(good_frame().with_columns(pl.lit(1.0).alias("load_average")))
    assert out.columns == list(c.COLUMNS)
    assert dict(out.schema) == c.SCHEMA
    assert out["mem_pct"].null_count() == 3  # omitted metrics are allowed, as nulls


def test_validate_maps_aliases_and_naive_or_string_times_to_utc():
    frame = pl.DataFrame(
        {
            "timestamp": ["2025-10-12T21:40:00", "2025-10-12T23:45:00+02:00"],
            "server_name": ["a", "a"],
            "cpu_percent": [1.0, 2.0],
            "status": ["idle", "recovery"],
        }
    )
    out = c.validate(frame)
    assert out["cpu_pct"].to_list() == [1.0, 2.0]
    assert out["state"].to_list() == ["idle", "recovery"]
    assert out["timestamp"].to_list() == [
        datetime(2025, 10, 12, 21, 40, tzinfo=UTC),
        datetime(2025, 10, 12, 21, 45, tzinfo=UTC),
    ]


def test_validate_accepts_epoch_seconds():
    frame = pl.DataFrame({"timestamp": [1_736_121_600], "server_name": ["a"]})
    assert c.validate(frame)["timestamp"][0] == datetime(2025, 1, 6, tzinfo=UTC)


def test_validate_requires_key_columns():
    with pytest.raises(ContractError, match="required column is missing") as exc:
        c.validate(pl.DataFrame({"cpu_pct": [1.0]}))
    assert issues_of(exc) == {(None, "timestamp"), (None, "server_name")}


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("cpu_pct", 100.5, r"within \[0, 100\]"),
        ("cpu_pct", -1.0, r"within \[0, 100\]"),
        ("cpu_pct", math.nan, "finite"),
        ("latency_ms", math.inf, "finite"),
        ("error_rate", 1.5, r"within \[0, 1\]"),
        ("disk_io_mb_s", -0.1, ">= 0"),
        ("cpu_pct", "high", "must be a number"),
        ("state", "degrading", "allowed: healthy"),
        ("profile", "mainframe", "allowed: ml_compute"),
        ("server_name", "web 01", "letters, digits"),
        ("server_name", "x" * 129, "1-128 characters"),
        ("timestamp", "yesterday", "ISO 8601"),
        ("timestamp", "1850-01-01T00:00:00Z", "between 1990-01-01"),
    ],
)
def test_validate_names_row_field_value_and_what_is_allowed(column, value, reason):
    frame = good_frame()
    values = frame[column].to_list() if column in frame.columns else [None] * 3
    if column == "timestamp":
        values = [v.isoformat() for v in values]
    values[1] = value
    frame = frame.with_columns(pl.Series(column, values, strict=False))
    with pytest.raises(ContractError, match=reason) as exc:
        c.validate(frame)
    assert issues_of(exc) == {(1, column)}
    assert exc.value.issues[0].value == value or math.isnan(value)


def test_validate_reports_many_rows_but_bounds_the_message():
    frame = good_frame(200).with_columns(pl.lit(500.0).alias("cpu_pct"))
    with pytest.raises(ContractError) as exc:
        c.validate(frame)
    assert len(exc.value.issues) == 50
    assert "and 40 more" in str(exc.value)


def test_seed_payloads_validate_through_the_aliases():
    batch = validate_records([SEED_001_RECORD, SEED_004_RECORD])
    assert batch.rejected == [] and batch.accepted == [0, 1]
    assert batch.ignored_fields == ["load_average"]
    rows = batch.frame.to_dicts()
    assert rows[0]["cpu_pct"] == 45.2 and rows[0]["mem_pct"] == 62.1 and rows[0]["disk_pct"] == 35.8
    assert rows[0]["state"] == "healthy" and rows[0]["timestamp"] == datetime(2025, 10, 12, 21, 40, tzinfo=UTC)
    assert rows[1]["profile"] == "database" and rows[1]["latency_ms"] == 12.5
    assert c.validate(batch.frame).equals(batch.frame)


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ("not an object", "<record>", "JSON object"),
        ({"server_name": "a"}, "timestamp", "required field is missing"),
        ({"timestamp": "2025-01-01T00:00:00Z"}, "server_name", "required field is missing"),
        ({**SEED_004_RECORD, "cpu_pct": "45"}, "cpu_pct", "must be a number"),
        ({**SEED_004_RECORD, "cpu_pct": True}, "cpu_pct", "must be a number"),
        ({**SEED_004_RECORD, "cpu_pct": float("nan")}, "cpu_pct", "finite"),
        ({**SEED_004_RECORD, "mem_pct": 101}, "mem_pct", r"\[0, 100\]"),
        ({**SEED_004_RECORD, "state": "on_fire"}, "state", "allowed: healthy"),
        ({**SEED_001_RECORD, "status": "degrading"}, "status", "allowed: healthy"),
        ({**SEED_004_RECORD, "profile": "x"}, "profile", "allowed: ml_compute"),
        ({**SEED_004_RECORD, "server_name": ""}, "server_name", "1-128"),
        ({**SEED_004_RECORD, "server_name": 7}, "server_name", "1-128"),
        ({**SEED_004_RECORD, "timestamp": "13/10/2025"}, "timestamp", "ISO 8601"),
        ({**SEED_004_RECORD, "timestamp": 1e300}, "timestamp", "epoch seconds"),
        ({**SEED_004_RECORD, "timestamp": "9999-01-01T00:00:00"}, "timestamp", "between"),
    ],
)
def test_bad_records_are_refused_with_index_field_and_reason(record, field, reason):
    batch = validate_records([SEED_004_RECORD, record, SEED_001_RECORD])
    assert batch.accepted == [0, 2]
    assert batch.frame.height == 2
    assert [(i.index, i.field) for i in batch.rejected] == [(1, field)]
    assert pytest.importorskip("re").search(reason, batch.rejected[0].reason)
    assert batch.rejected[0].to_dict() == {"index": 1, "field": field, "error": batch.rejected[0].reason}


def test_a_record_with_several_problems_reports_each():
    batch = validate_records([{"timestamp": "x", "server_name": "a b", "cpu_pct": -5}])
    assert {i.field for i in batch.rejected} == {"timestamp", "server_name", "cpu_pct"}
    assert batch.frame.height == 0 and list(batch.frame.columns) == list(c.COLUMNS)


def test_check_metric_names_lists_the_allowed_ones():
    assert c.check_metric_names(["cpu_pct"]) == ["cpu_pct"]
    with pytest.raises(ContractError, match="unknown metric; allowed: cpu_pct, mem_pct"):
        c.check_metric_names(["cpu_percent"])


def test_to_grid_buckets_samples_with_each_metrics_aggregation():
    t0 = datetime(2025, 1, 6, tzinfo=UTC)
    frame = c.validate(
        pl.DataFrame(
            {
                "timestamp": [t0 + timedelta(seconds=s) for s in (0, 60, 299, 300, 30)],
                "server_name": ["a", "a", "a", "a", "b"],
                "cpu_pct": [10.0, 20.0, None, 50.0, 1.0],
                "latency_ms": [5.0, 9.0, 7.0, 1.0, 2.0],
                "state": ["healthy", None, "heavy_load", None, None],
            }
        )
    )
    grid = c.to_grid(frame)
    assert grid.columns == list(c.COLUMNS)
    a = grid.filter(pl.col("server_name") == "a")
    assert a["timestamp"].to_list() == [t0, t0 + timedelta(minutes=5)]
    assert a["cpu_pct"].to_list() == [15.0, 50.0]  # mean, ignoring the missing sample
    assert a["latency_ms"].to_list() == [9.0, 1.0]  # max
    assert a["state"].to_list() == ["heavy_load", None]
    assert grid.filter(pl.col("server_name") == "b")["timestamp"].to_list() == [t0]


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e20])
def test_absurd_epoch_timestamps_are_reported_not_crashing(value):
    with pytest.raises(ContractError, match="timestamp"):
        c.validate(pl.DataFrame({"timestamp": [1.7e9, value], "server_name": ["a", "a"]}))


def test_boolean_metrics_and_the_upper_time_bound_agree_between_frames_and_records():
    with pytest.raises(ContractError, match="must be a number"):
        c.validate(pl.DataFrame({"timestamp": [1.7e9], "server_name": ["a"], "cpu_pct": [True]}))
    edge = "2100-01-01T00:00:00Z"
    with pytest.raises(ContractError, match="between"):
        c.validate(pl.DataFrame({"timestamp": [edge], "server_name": ["a"]}))
    assert validate_records([{"timestamp": edge, "server_name": "a"}]).rejected
