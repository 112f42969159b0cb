"""Adapters of real data (Bitbrains, NAB, generic CSV/parquet) into the contract, on small real slices."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from workbench import contract
from workbench.adapters import make_mapping, nab_windows, read_bitbrains, read_generic, read_nab
from workbench.adapters.tables import detect_separator, unescape_separator
from workbench.adapters.times import epoch_unit, parse_times
from workbench.adapters.units import unit_factor
from workbench.cli import main
from workbench.data import read_frame
from workbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
VMS = (1, 20, 52)  # 20: many duplicate rows; 52: CPU above 100 % and unknown memory at its first steps
MONTHS = ("2013-7", "2013-8")
NAB_FILES = ("ec2_cpu_utilization_24ae8d.csv", "ec2_network_in_257a54.csv", "ec2_network_in_5abac7.csv")


@pytest.fixture(scope="module")
def real() -> Path:
    env = os.environ.get("WORKBENCH_REAL_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "real"
    if not (root / "bitbrains-rnd").is_dir() or not (root / "nab").is_dir():
        pytest.skip(f"real data not found at {root} (set WORKBENCH_REAL_DATA to the folder with bitbrains-rnd, nab)")
    return root


@pytest.fixture(scope="module")
def vm_files(real: Path) -> list[Path]:
    return [real / "bitbrains-rnd" / month / f"{vm}.csv.gz" for month in MONTHS for vm in VMS]


@pytest.fixture(scope="module")
def raw(vm_files: list[Path]) -> pl.DataFrame:
    """The slice parsed independently of the adapter: split on ';' + tab with plain Python."""
    rows = []
    for path in vm_files:
        lines = gzip.decompress(path.read_bytes()).decode().splitlines()
        vm = int(path.name.split(".")[0])
        rows += [[vm, *map(float, line.split(";\t"))] for line in lines[1:] if line.strip()]
    names = ["vm", "ts", "cores", "cpu_cap", "cpu_mhz", "cpu", "mem_prov", "mem_used", "rd", "wr", "rx", "tx"]
    return pl.DataFrame(rows, schema=names, orient="row")


@pytest.fixture(scope="module")
def clipped(vm_files: list[Path]):
    return read_bitbrains(vm_files, clip=True)


@pytest.fixture(scope="module")
def nulled(vm_files: list[Path]):
    return read_bitbrains(vm_files, clip=False)


# --------------------------------------------------------------------------- Bitbrains


def test_bitbrains_is_contract_valid_sorted_and_on_the_grid(clipped) -> None:
    frame = clipped.frame
    assert frame.columns == list(contract.COLUMNS)
    assert contract.validate(frame).equals(frame)
    assert sorted(frame[contract.SERVER].unique()) == [f"bitbrains-vm-{vm}" for vm in sorted(VMS, key=str)]
    assert frame.equals(frame.sort(contract.SERVER, contract.TIMESTAMP))
    epoch = frame[contract.TIMESTAMP].dt.epoch("s")
    assert (epoch % contract.STEP_SECONDS == 0).all()
    assert frame.select(contract.SERVER, contract.TIMESTAMP).is_duplicated().sum() == 0
    assert frame[contract.STATE].null_count() == frame.height
    assert set(frame[contract.PROFILE]) == {"generic"}
    assert any("not inferred" in note for note in clipped.report.notes)


def test_bitbrains_seconds_not_milliseconds(clipped, raw: pl.DataFrame) -> None:
    assert epoch_unit(raw["ts"]) == "s"  # the header says [ms]
    assert epoch_unit(raw["ts"] * 1000) == "ms"
    assert any("header says 'Timestamp [ms]'" in n and "epoch seconds in 6 file(s)" in n for n in clipped.report.notes)
    first = datetime.fromtimestamp(int(raw["ts"].min()) // 300 * 300, UTC)
    assert clipped.frame[contract.TIMESTAMP].min() >= first
    assert clipped.frame[contract.TIMESTAMP].min().year == 2013


def test_bitbrains_units_against_raw_values(clipped, raw: pl.DataFrame) -> None:
    single = raw.unique().with_columns((pl.col("ts") // 300 * 300).alias("step"))
    alone = single.filter(pl.len().over("vm", "step") == 1, pl.col("mem_prov") > 0, pl.col("cpu") < 100)
    sample = alone.filter(pl.col("vm") == 1, pl.col("rx") > 0, pl.col("rd") > 0).row(100, named=True)
    step = datetime.fromtimestamp(int(sample["step"]), UTC)
    row = clipped.frame.filter(pl.col(contract.SERVER) == "bitbrains-vm-1", pl.col(contract.TIMESTAMP) == step)
    got = row.row(0, named=True)
    assert got["net_in_mb_s"] == pytest.approx(sample["rx"] / 1024)
    assert got["net_out_mb_s"] == pytest.approx(sample["tx"] / 1024)
    assert got["disk_io_mb_s"] == pytest.approx((sample["rd"] + sample["wr"]) / 1024)
    assert got["mem_pct"] == pytest.approx(100 * sample["mem_used"] / sample["mem_prov"])
    assert got["cpu_pct"] == pytest.approx(sample["cpu"])
    assert got["disk_pct"] is None and got["latency_ms"] is None and got["error_rate"] is None


def test_bitbrains_duplicates_counted(clipped, raw: pl.DataFrame) -> None:
    expected = sum(part.height - part.unique().height for _, part in raw.group_by("vm"))
    assert expected > 1000  # VM 20 repeats most of its rows
    assert clipped.report.duplicates == expected
    assert f"duplicates: {expected:,} identical samples dropped" in clipped.report.lines()


def test_bitbrains_cpu_above_100_clipped_and_counted(clipped, raw: pl.DataFrame) -> None:
    unique = raw.unique()
    above = unique.filter(pl.col("cpu") > 100)
    assert above.height > 0
    found = clipped.report.out_of_range["cpu_pct"]
    assert found.above == above.height
    assert found.max_seen == pytest.approx(above["cpu"].max())
    assert clipped.frame["cpu_pct"].max() == 100
    line = f"cpu_pct: {above.height:,} samples above 100 clipped to 100 (max seen {above['cpu'].max():.4g})"
    assert line in clipped.report.lines()


def test_bitbrains_without_clip_nulls_but_keeps_every_server(clipped, nulled, raw: pl.DataFrame) -> None:
    # Refusing the file (or the VM) for one bad sample would lose servers or rows here.
    assert nulled.report.skipped_servers == {} and nulled.report.skipped_files == {}
    assert nulled.frame[contract.SERVER].n_unique() == len(VMS)
    assert nulled.frame.height == clipped.frame.height
    assert nulled.report.out_of_range["cpu_pct"].above == clipped.report.out_of_range["cpu_pct"].above
    assert nulled.frame["cpu_pct"].max() <= 100
    assert nulled.frame["cpu_pct"].null_count() > clipped.frame["cpu_pct"].null_count()
    assert any("set to null, outside [0, 100]" in line for line in nulled.report.lines())


def test_bitbrains_leading_unknown_memory_trimmed(clipped, raw: pl.DataFrame) -> None:
    known = raw.filter(pl.col("mem_prov") > 0).group_by("vm").agg(pl.col("ts").min().alias("known"))
    starts = raw.group_by("vm").agg(pl.col("ts").min().alias("first")).join(known, on="vm")
    late = starts.filter(pl.col("known") // 300 > pl.col("first") // 300)
    assert late["vm"].to_list() == [52]
    first = clipped.frame.group_by(contract.SERVER).agg(pl.col(contract.TIMESTAMP).min())
    got = dict(first.iter_rows())["bitbrains-vm-52"]
    assert got == datetime.fromtimestamp(int(late["known"][0]) // 300 * 300, UTC)
    assert clipped.report.trimmed_servers == 1
    assert clipped.report.trimmed_rows > 1000
    assert clipped.frame.filter(pl.col(contract.SERVER) == "bitbrains-vm-52")["mem_pct"][0] is not None


def test_bitbrains_same_vm_across_months_is_one_server(clipped) -> None:
    vm1 = clipped.frame.filter(pl.col(contract.SERVER) == "bitbrains-vm-1")[contract.TIMESTAMP]
    assert vm1.min().month == 6 and vm1.max().month == 8  # 2013-06-30 22:00 UTC is 1 July local time


# --------------------------------------------------------------------------- NAB


@pytest.fixture(scope="module")
def nab(real: Path):
    return read_nab([real / "nab" / "realAWSCloudwatch" / name for name in NAB_FILES])


def test_nab_maps_cpu_and_network_bytes(nab, real: Path) -> None:
    frame = nab.frame
    assert contract.validate(frame).equals(frame)
    assert sorted(frame[contract.SERVER].unique()) == ["nab-24ae8d", "nab-257a54", "nab-5abac7"]
    cpu_raw = pl.read_csv(real / "nab" / "realAWSCloudwatch" / NAB_FILES[0], try_parse_dates=True)
    cpu = frame.filter(pl.col(contract.SERVER) == "nab-24ae8d")
    assert cpu.height == cpu_raw.height
    assert cpu["cpu_pct"].to_list() == pytest.approx(cpu_raw["value"].to_list())
    assert cpu["net_in_mb_s"].null_count() == cpu.height
    net_raw = pl.read_csv(real / "nab" / "realAWSCloudwatch" / NAB_FILES[1], try_parse_dates=True)
    net = frame.filter(pl.col(contract.SERVER) == "nab-257a54")
    assert net["net_in_mb_s"][0] == pytest.approx(net_raw["value"][0] / 300 / 1024**2)
    step = net_raw["timestamp"][0].replace(tzinfo=UTC)
    assert net[contract.TIMESTAMP][0] == step.replace(minute=step.minute // 5 * 5)


def test_nab_duplicates_and_combined_steps(nab, real: Path) -> None:
    raw = pl.read_csv(real / "nab" / "realAWSCloudwatch" / NAB_FILES[2])
    assert nab.report.duplicates == raw.height - raw.unique().height > 0
    assert nab.report.combined > 0


def test_nab_unknown_kinds_are_named(real: Path, tmp_path: Path) -> None:
    (tmp_path / NAB_FILES[0]).symlink_to(real / "nab" / "realAWSCloudwatch" / NAB_FILES[0])
    (tmp_path / "elb_request_count_8c0756.csv").write_text("timestamp,value\n2014-04-10 00:04:00,12\n")
    (tmp_path / "grok_asg_anomaly.csv").write_text("timestamp,value\n2014-04-10 00:04:00,1\n")
    result = read_nab(tmp_path)
    skipped = {Path(f).name: reason for f, reason in result.report.skipped_files.items()}
    assert set(skipped) == {"elb_request_count_8c0756.csv", "grok_asg_anomaly.csv"}
    assert "'elb_request_count' has no contract meaning" in skipped["elb_request_count_8c0756.csv"]
    assert any("skipped file" in line and "grok_asg_anomaly" in line for line in result.report.lines())
    assert result.frame[contract.SERVER].unique().to_list() == ["nab-24ae8d"]


def test_nab_windows_table(real: Path) -> None:
    windows = nab_windows(real / "nab")
    assert windows.columns == ["server_name", "metric", "start", "end", "file"]
    assert windows.schema["start"] == pl.Datetime("us", "UTC")
    first = windows.filter(pl.col("server_name") == "nab-24ae8d").row(0, named=True)
    assert first["metric"] == "cpu_pct"
    assert first["start"] == datetime(2014, 2, 26, 13, 45, tzinfo=UTC)
    assert first["end"] == datetime(2014, 2, 27, 6, 25, tzinfo=UTC)
    assert windows.filter(pl.col("server_name") == "nab-c6585a").height == 0  # its list is empty
    assert (windows["end"] > windows["start"]).all()


# --------------------------------------------------------------------------- generic


def _write(path: Path, text: str, *, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_generic_semicolon_tab_gzip_epoch_ms_and_units(tmp_path: Path) -> None:
    text = "time [ms];\thost;\tcpu;\trx [KB/s];\terr\n"
    text += "".join(
        f"{1_700_000_100_000 + i * 60_000};\tweb-1;\t{i / 100};\t{1024 * i};\t{i / 1000}\n" for i in range(10)
    )
    path = _write(tmp_path / "m.csv.gz", text, gz=True)
    result = read_generic(
        path,
        {"cpu_pct": "cpu", "net_in_mb_s": "rx [KB/s]", "error_rate": "err"},
        units={"cpu_pct": "fraction", "net_in_mb_s": "KB/s"},
        server_column="host",
    )
    frame = result.frame
    assert contract.validate(frame).equals(frame)
    assert frame[contract.SERVER].unique().to_list() == ["web-1"]
    assert (frame[contract.TIMESTAMP].dt.epoch("s") % 300 == 0).all()
    assert frame.height == 2  # 10 one-minute samples over two 5-minute steps
    assert frame["cpu_pct"][0] == pytest.approx(100 * sum(i / 100 for i in range(5)) / 5)  # fraction -> %, mean
    assert frame["net_in_mb_s"][1] == pytest.approx(sum(range(5, 10)) / 5)  # KB/s -> MB/s, mean
    assert frame["error_rate"][1] == pytest.approx(0.009)  # max within the step
    assert result.report.combined == 8
    assert any("epoch milliseconds (detected by magnitude)" in note for note in result.report.notes)


def test_generic_iso_times_and_sum_of_columns(tmp_path: Path) -> None:
    text = "ts,read,write,lat\n2025-01-06T00:00:00Z,1,2,0.5\n2025-01-06T00:05:00+01:00,3,4,0.25\n"
    result = read_generic(
        _write(tmp_path / "db-7.csv", text),
        {"disk_io_mb_s": "read+write", "latency_ms": "lat"},
        units={"latency_ms": "s"},
        profile="database",
    )
    frame = result.frame
    assert frame[contract.SERVER].unique().to_list() == ["db-7"]  # named after the file
    assert frame["disk_io_mb_s"].to_list() == [7.0, 3.0]  # 00:05+01:00 is 23:05Z the day before
    assert frame["latency_ms"].to_list() == [250.0, 500.0]
    assert set(frame[contract.PROFILE]) == {"database"}


def test_generic_parquet_with_datetimes(tmp_path: Path) -> None:
    start = datetime(2025, 1, 6, 0, 2, tzinfo=UTC)
    pl.DataFrame(
        {"at": pl.datetime_range(start, start.replace(minute=22), "5m", eager=True), "node": "n1", "mem": 0.5}
    ).write_parquet(tmp_path / "p.parquet")
    result = read_generic(
        tmp_path, {"mem_pct": "mem"}, units={"mem_pct": "fraction"}, time_column="at", server_column="node"
    )
    assert result.frame[contract.TIMESTAMP].dt.minute().to_list() == [0, 5, 10, 15, 20]
    assert result.frame["mem_pct"].to_list() == [50.0] * 5


def test_generic_skipped_server_is_named_and_fleet_kept(tmp_path: Path) -> None:
    text = "timestamp,server,cpu\n" + "".join(
        f"2025-01-06T00:{m:02d}:00Z,{s},{v}\n" for m in range(0, 30, 5) for s, v in (("ok-1", 50), ("bad-1", "n/a"))
    )
    result = read_generic(_write(tmp_path / "f.csv", text), {"cpu_pct": "cpu"}, server_column="server")
    assert result.frame[contract.SERVER].unique().to_list() == ["ok-1"]
    assert "no usable value of cpu_pct" in result.report.skipped_servers["bad-1"]
    assert result.report.non_numeric == {"cpu_pct": 6}
    assert any(line.startswith("skipped server bad-1:") for line in result.report.lines())


def test_generic_out_of_range_nulled_not_refused(tmp_path: Path) -> None:
    rows = [("00", 10), ("05", 150), ("10", -3), ("15", 40)]
    text = "timestamp,cpu,mem\n" + "".join(f"2025-01-06T00:{m}:00Z,{v},50\n" for m, v in rows)
    path = _write(tmp_path / "s.csv", text)
    result = read_generic(path, {"cpu_pct": "cpu", "mem_pct": "mem"}, server="s1", clip=False)
    assert result.frame["cpu_pct"].to_list() == [10.0, None, None, 40.0]
    found = result.report.out_of_range["cpu_pct"]
    assert (found.above, found.below, found.max_seen, found.min_seen) == (1, 1, 150.0, -3.0)
    clipped = read_generic(path, {"cpu_pct": "cpu", "mem_pct": "mem"}, server="s1")
    assert clipped.frame["cpu_pct"].to_list() == [10.0, 100.0, 0.0, 40.0]


def test_generic_leading_gap_trimmed(tmp_path: Path) -> None:
    text = "timestamp,cpu,mem\n2025-01-06T00:00:00Z,10,\n2025-01-06T00:05:00Z,11,\n2025-01-06T00:10:00Z,12,30\n"
    result = read_generic(_write(tmp_path / "g.csv", text), {"cpu_pct": "cpu", "mem_pct": "mem"}, server="g")
    assert result.frame["cpu_pct"].to_list() == [12.0]
    assert (result.report.trimmed_rows, result.report.trimmed_servers) == (2, 1)


def test_generic_mapping_errors_are_clear(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "timestamp,cpu_usage,rx\n2025-01-06T00:00:00Z,1,2\n")
    with pytest.raises(
        ConfigError, match=r"source column\(s\) 'cpu' not found; available: 'timestamp', 'cpu_usage', 'rx'"
    ):
        read_generic(path, {"cpu_pct": "cpu"}, server="x")
    with pytest.raises(ConfigError, match=r"unknown contract column 'cpu'; allowed: cpu_pct, mem_pct, .*error_rate"):
        make_mapping({"cpu": "cpu_usage"})
    with pytest.raises(ConfigError, match=r"unknown unit 'furlongs' for net_in_mb_s; allowed: MB/s, KB/s, B/s"):
        make_mapping({"net_in_mb_s": "rx"}, {"net_in_mb_s": "furlongs"})
    with pytest.raises(ConfigError, match=r"unknown profile 'gpu'; allowed: ml_compute"):
        make_mapping({"cpu_pct": "cpu_usage"}, profile="gpu")
    with pytest.raises(ConfigError, match="no time column found; pass one with --time-column; available: 'when'"):
        read_generic(_write(tmp_path / "y.csv", "when,cpu\n1,2\n"), {"cpu_pct": "cpu"}, server="y")
    with pytest.raises(ConfigError, match="cannot read time column 'timestamp'"):
        read_generic(_write(tmp_path / "z.csv", "timestamp,cpu\nyesterday,2\n"), {"cpu_pct": "cpu"}, server="z")


def test_separators_and_units_helpers() -> None:
    assert detect_separator("a;\tb;\tc") == ";\t"
    assert detect_separator("a;b;c") == ";"
    assert detect_separator("a\tb") == "\t"
    assert unescape_separator(r";\t") == ";\t" and unescape_separator("tab") == "\t"
    assert unit_factor("net_in_mb_s", "KB/s") == 1 / 1024
    assert unit_factor("net_in_mb_s", "bytes/5min") == 1 / (300 * 1024**2)
    assert unit_factor("cpu_pct", "fraction") == 100
    assert unit_factor("latency_ms", "s") == 1000
    assert unit_factor("latency_ms", "0.5") == 0.5
    times, how = parse_times(pl.Series("t", ["1700000000", "1700000300"]))
    assert times[1] == datetime(2023, 11, 14, 22, 18, 20, tzinfo=UTC) and how.startswith("epoch seconds")


# --------------------------------------------------------------------------- CLI


def test_cli_bitbrains_writes_a_dataset_read_frame_accepts(real: Path, tmp_path: Path) -> None:
    months = [str(real / "bitbrains-rnd" / m) for m in MONTHS]
    out = tmp_path / "bb"
    result = CliRunner().invoke(
        main, ["import", *months, "--format", "bitbrains", "--out", str(out), "--limit-servers", "2"]
    )
    assert result.exit_code == 0, result.output
    frame = read_frame(out)
    assert contract.validate(frame).equals(frame)
    assert sorted(frame[contract.SERVER].unique()) == ["bitbrains-vm-1", "bitbrains-vm-2"]
    assert "duplicates:" in result.output and f"wrote {frame.height:,} rows for 2 servers" in result.output
    report = json.loads((out / "import_report.json").read_text())
    assert report["rows_out"] == frame.height and report["adapter"] == "bitbrains"


def test_cli_nab_writes_windows(real: Path, tmp_path: Path) -> None:
    out = tmp_path / "nab"
    result = CliRunner().invoke(main, ["import", str(real / "nab"), "--format", "nab", "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = read_frame(out)
    assert frame[contract.SERVER].str.starts_with("nab-").all() and frame.height > 0
    windows = pl.read_parquet(out / "anomaly_windows.parquet")
    assert windows.height > 0 and f"anomaly windows: {windows.height} written" in result.output


def test_cli_generic_and_its_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "h.csv", "timestamp|host|cpu\n2025-01-06T00:00:00Z|a|5\n2025-01-06T00:05:00Z|a|6\n")
    out = tmp_path / "g"
    args = ["import", str(path), "--format", "generic", "--out", str(out), "--server-column", "host"]
    ok = CliRunner().invoke(main, [*args, "--map", "cpu_pct=cpu", "--sep", "|"])
    assert ok.exit_code == 0, ok.output
    assert read_frame(out)["cpu_pct"].to_list() == [5.0, 6.0]
    bad = CliRunner().invoke(main, [*args, "--map", "cpu_pct=load", "--overwrite"])
    assert bad.exit_code != 0 and "'load' not found; available: 'timestamp', 'host', 'cpu'" in bad.output
    wrong = CliRunner().invoke(main, ["import", str(path), "--format", "nab", "--out", str(out), "--map", "a=b"])
    assert wrong.exit_code == 2 and "--map apply to --format generic only" in wrong.output
    empty = _write(tmp_path / "e.csv", "timestamp,host,cpu\n")
    none_args = ["import", str(empty), "--format", "generic", "--out", str(tmp_path / "e"), "--map", "cpu_pct=cpu"]
    none = CliRunner().invoke(main, none_args)
    assert none.exit_code == 1 and "no server has usable data" in none.output and "skipped file" in none.output
