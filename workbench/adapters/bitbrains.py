"""Bitbrains GWA-T-12 "Rnd" traces: one ``<N>.csv.gz`` per VM and month, ``;``+tab separated.

Mapping (1 MB = 1024 KB):

* ``cpu_pct`` = ``CPU usage [%]``;
* ``mem_pct`` = 100 x ``Memory usage [KB]`` / ``Memory capacity provisioned [KB]``, null where
  the provisioned capacity is <= 0 (unknown);
* ``disk_io_mb_s`` = (``Disk read throughput [KB/s]`` + ``Disk write throughput [KB/s]``) / 1024;
* ``net_in_mb_s``, ``net_out_mb_s`` = ``Network received/transmitted throughput [KB/s]`` / 1024.

The header says ``Timestamp [ms]`` but the values are epoch seconds; the unit is detected by
magnitude per file. VM ``N`` becomes server ``bitbrains-vm-N`` (the same number in several month
folders is the same server); its profile is ``generic`` (the traces say nothing of roles).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from workbench import contract
from workbench.adapters.policies import conform
from workbench.adapters.report import ImportReport, ImportResult
from workbench.adapters.tables import READ_ERRORS, read_table
from workbench.adapters.times import EPOCH_NAMES, epoch_unit, from_epoch
from workbench.adapters.units import MIB

SEPARATOR = ";\t"
TIME = "Timestamp [ms]"
CPU = "CPU usage [%]"
MEM_PROVISIONED = "Memory capacity provisioned [KB]"
MEM_USED = "Memory usage [KB]"
DISK_READ = "Disk read throughput [KB/s]"
DISK_WRITE = "Disk write throughput [KB/s]"
NET_IN = "Network received throughput [KB/s]"
NET_OUT = "Network transmitted throughput [KB/s]"
COLUMNS = (TIME, CPU, MEM_PROVISIONED, MEM_USED, DISK_READ, DISK_WRITE, NET_IN, NET_OUT)
SERVER_PREFIX = "bitbrains-vm-"
_VM_FILE = re.compile(r"^(\d+)\.csv(\.gz)?$")


def read_bitbrains(
    source: str | Path | Sequence[str | Path], *, clip: bool = True, limit_servers: int | None = None
) -> ImportResult:
    """Import Bitbrains VM traces as a contract frame.

    Args:
        source: A month folder of ``<N>.csv.gz`` files, a folder of month folders, a single
            file, or several of these (VMs with the same number are joined).
        clip: Clip out-of-range samples (e.g. CPU above 100 %) to the contract range; else null.
        limit_servers: Read only the VMs with the lowest numbers, this many.

    Returns:
        The frame and the report of every policy applied.

    Raises:
        FileNotFoundError: when a source does not exist or holds no VM file.
    """
    began = time.perf_counter()
    sources = [Path(source)] if isinstance(source, str | Path) else [Path(s) for s in source]
    report = ImportReport(", ".join(map(str, sources)), "bitbrains")
    files = _vm_files(sources, report)
    if limit_servers is not None:
        keep = sorted({vm for vm, _ in files})[:limit_servers]
        files = [(vm, f) for vm, f in files if vm in keep]
    units: Counter[str] = Counter()
    frames = [frame for vm, path in files if (frame := _read_vm(vm, path, report, units)) is not None]
    samples = pl.concat(frames) if frames else _empty()
    report.notes += _notes(samples, units)
    frame = conform(samples.drop("__mem_unknown"), report, clip=clip)
    report.seconds = time.perf_counter() - began
    return ImportResult(frame, report)


def _vm_files(sources: list[Path], report: ImportReport) -> list[tuple[int, Path]]:
    files: list[tuple[int, Path]] = []
    for source in sources:
        if not source.exists():
            raise FileNotFoundError(2, "no such Bitbrains file or folder", str(source))
        candidates = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in candidates:
            match = _VM_FILE.match(path.name)
            if match:
                files.append((int(match.group(1)), path))
            elif path.name.lower().endswith((".csv", ".csv.gz")):
                report.skipped_files[str(path)] = "name is not <VM number>.csv(.gz)"
    if not files:
        raise FileNotFoundError(2, "no Bitbrains VM file (<N>.csv or <N>.csv.gz) found", ", ".join(map(str, sources)))
    return sorted(files)


def _read_vm(vm: int, path: Path, report: ImportReport, units: Counter[str]) -> pl.DataFrame | None:
    try:
        raw, _ = read_table(path, SEPARATOR, pl.Float64())
    except READ_ERRORS as error:
        report.skipped_files[str(path)] = f"unreadable: {error}"
        return None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing or raw.height == 0:
        reason = f"missing columns {missing}" if missing else "no rows"
        report.skipped_files[str(path)] = reason
        return None
    report.files_read += 1
    unit = epoch_unit(raw.get_column(TIME))
    units[unit] += 1
    return _samples(raw, from_epoch(raw.get_column(TIME), unit), f"{SERVER_PREFIX}{vm}")


def _samples(raw: pl.DataFrame, times: pl.Series, server: str) -> pl.DataFrame:
    kb = [pl.col(c).cast(pl.Float64) for c in COLUMNS[1:]]
    cpu, provisioned, used, read, write, net_in, net_out = kb
    return raw.select(
        times.alias(contract.TIMESTAMP),
        pl.lit(server).alias(contract.SERVER),
        pl.lit(contract.DEFAULT_PROFILE).alias(contract.PROFILE),
        cpu.alias("cpu_pct"),
        pl.when(provisioned > 0).then(100 * used / provisioned).alias("mem_pct"),
        ((read + write) / 1024).alias("disk_io_mb_s"),
        (net_in / 1024).alias("net_in_mb_s"),
        (net_out / 1024).alias("net_out_mb_s"),
        (provisioned <= 0).alias("__mem_unknown"),
    )


def _empty() -> pl.DataFrame:
    names = ("cpu_pct", "mem_pct", "disk_io_mb_s", "net_in_mb_s", "net_out_mb_s")
    schema = {n: contract.SCHEMA[n] for n in (contract.TIMESTAMP, contract.SERVER, contract.PROFILE, *names)}
    return pl.DataFrame(schema={**schema, "__mem_unknown": pl.Boolean})


def _notes(samples: pl.DataFrame, units: Counter[str]) -> list[str]:
    seen = ", ".join(f"{EPOCH_NAMES[unit]} in {n:,} file(s)" for unit, n in units.items())
    unknown = int(samples.get_column("__mem_unknown").sum())
    return [
        f"timestamps: header says {TIME!r} but values are read as {seen or 'none'} (detected by magnitude)",
        "units: disk_io_mb_s = (read + write KB/s) / 1024, net_*_mb_s = KB/s / 1024 (1 MB = 1024 KB = "
        f"{int(MIB):,} bytes); mem_pct = 100 x usage / provisioned",
        f"mem_pct: {unknown:,} samples with memory provisioned <= 0 (unknown) left null",
        "profile: generic for every server (not inferred: the traces carry no server roles)",
        "state: null (unknown) for every row; disk_pct, latency_ms, error_rate: not in the source, null",
    ]
