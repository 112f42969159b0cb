import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from workbench import contract
from workbench.data import fingerprint, read_frame, read_incidents, write_incidents, write_parquet
from workbench.errors import ContractError
from workbench.simulator import (
    GROUND_TRUTH_SCHEMA,
    INCIDENT_TYPES,
    BatchRun,
    SimulatorConfig,
    generate,
    make_fleet,
    simulate,
)


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return generate(3, 1.5, seed=4)


def test_write_read_round_trip(frame: pl.DataFrame, tmp_path: Path) -> None:
    out = write_parquet(frame, tmp_path / "ds")
    assert out == tmp_path / "ds"
    parts = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert parts == ["metrics/date=2025-01-06/part-0.parquet", "metrics/date=2025-01-07/part-0.parquet"]
    assert json.loads((out / "contract.json").read_text()) == contract.contract_json()
    back = read_frame(out)
    assert "date" not in back.columns
    assert back.equals(frame)
    assert read_frame(out / "metrics").equals(frame)


def test_read_shuffled_single_parquet_and_csv(frame: pl.DataFrame, tmp_path: Path) -> None:
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=0)
    shuffled.write_parquet(tmp_path / "one.parquet")
    assert read_frame(tmp_path / "one.parquet").equals(frame)
    shuffled.write_csv(tmp_path / "one.csv")
    assert read_frame(tmp_path / "one.csv").equals(frame)


def test_refuses_to_overwrite_unless_asked(frame: pl.DataFrame, tmp_path: Path) -> None:
    write_parquet(frame, tmp_path)
    with pytest.raises(FileExistsError):
        write_parquet(frame, tmp_path)
    small = frame.filter(pl.col(contract.SERVER) == frame[contract.SERVER][0]).head(10)
    write_parquet(small, tmp_path, overwrite=True)
    assert read_frame(tmp_path).equals(small)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_out_of_range_value_names_row_field_and_file(frame: pl.DataFrame, tmp_path: Path) -> None:
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(150.0).otherwise(pl.col("cpu_pct")).alias("cpu_pct")
    )
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ContractError) as info:
        read_frame(tmp_path / "bad.parquet")
    [issue] = info.value.issues
    assert (issue.index, issue.field, issue.value) == (7, "cpu_pct", 150.0)
    assert "record 7" in str(info.value) and "[0, 100]" in str(info.value)
    assert any("bad.parquet" in note for note in info.value.__notes__)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_frame(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no parquet"):
        read_frame(tmp_path)


def test_missing_column_on_write(frame: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="mem_pct"):
        write_parquet(frame.drop("mem_pct"), tmp_path)


def test_fingerprint_is_stable_and_content_based(frame: pl.DataFrame) -> None:
    value = fingerprint(frame)
    assert len(value) == 16 and int(value, 16) >= 0
    assert fingerprint(frame.sample(fraction=1.0, shuffle=True, seed=1)) == value
    assert fingerprint(generate(3, 1.5, seed=4)) == value
    changed = frame.with_columns(pl.col("cpu_pct") + (pl.int_range(pl.len()) == 0) * 1e-9)
    assert fingerprint(changed) != value
    assert fingerprint(frame.with_columns(pl.lit(None, pl.String).alias(contract.STATE))) != value


def test_fingerprint_known_value() -> None:
    # Pins the algorithm: a change here invalidates the fingerprints stored in existing bundles.
    tiny = pl.DataFrame({"a": ["x", None, "y"], "b": [1, None, 2]})
    assert fingerprint(tiny) == "8275626c4c966d74"


@pytest.fixture(scope="module")
def simulated():
    config = SimulatorConfig(incident_rates=dict.fromkeys(INCIDENT_TYPES, 1.0))
    return simulate(make_fleet(4, seed=2), 1.5, config=config)


def test_ground_truth_is_written_beside_the_metrics(simulated, tmp_path: Path) -> None:
    out = write_parquet(simulated.metrics, tmp_path / "ds", incidents=simulated.incidents)
    assert (out / "incidents.parquet").is_file()
    back = read_incidents(out)
    assert back.height > 3 and back.equals(simulated.incidents)
    assert read_incidents(out / "incidents.parquet").equals(back)
    assert read_frame(out).equals(simulated.metrics)  # the ground truth is not read as metrics


def test_missing_ground_truth_reads_as_an_empty_table(simulated, tmp_path: Path) -> None:
    write_parquet(simulated.metrics, tmp_path, incidents=simulated.incidents)
    write_parquet(simulated.metrics, tmp_path, overwrite=True)  # no incidents: the stale file goes
    empty = read_incidents(tmp_path)
    assert empty.height == 0 and empty.schema == pl.Schema(GROUND_TRUTH_SCHEMA)
    with pytest.raises(FileNotFoundError):
        read_incidents(tmp_path / "nowhere")


def test_ground_truth_without_its_columns_is_refused(simulated, tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="onset"):
        write_parquet(simulated.metrics, tmp_path, incidents=simulated.incidents.drop("onset"))
    simulated.incidents.drop("metric").write_parquet(tmp_path / "incidents.parquet")
    with pytest.raises(ContractError, match="metric") as info:
        read_incidents(tmp_path)
    assert any("incidents.parquet" in note for note in info.value.__notes__)


def test_chunks_write_the_same_dataset_as_one_frame(tmp_path: Path) -> None:
    fleet, start = make_fleet(3, seed=5), datetime(2025, 1, 6, 18, tzinfo=UTC)
    run = BatchRun(fleet, 1.5, start=start)
    out = write_parquet(run.frames(), tmp_path / "chunks")
    write_incidents(run.incidents(), out)
    whole = simulate(fleet, 1.5, start=start)
    parts = sorted(p.relative_to(out / "metrics").as_posix() for p in out.rglob("*.parquet") if p.parent != out)
    assert parts == [
        "date=2025-01-06/part-0.parquet",
        "date=2025-01-07/part-0.parquet",
        "date=2025-01-07/part-1.parquet",  # the second simulated day starts at 18:00
        "date=2025-01-08/part-0.parquet",
    ]
    assert read_frame(out).equals(whole.metrics)
    assert read_incidents(out).equals(whole.incidents)
    with pytest.raises(RuntimeError, match="once"):
        next(run.frames())
