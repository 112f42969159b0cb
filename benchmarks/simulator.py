"""Time batch generation: simulate a fleet and write it as partitioned parquet, as `workbench generate` does.

Prints seconds and rows per second for (a) simulating the span day by day without keeping it
and (b) the whole batch command (simulate + write the parquet partitions and the ground truth,
writes overlapping with the next day's simulation), plus the process's peak resident memory.
The default is the issue's target size: 30 days x 1,000 servers (aim: under 20 s on 2 cores).

    .venv/bin/python benchmarks/simulator.py [--servers 1000] [--days 30] [--seed 0] [--scenario healthy]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from workbench.data import write_incidents, write_parquet
from workbench.simulator import SCENARIO_NAMES, BatchRun, make_fleet


def simulate_only(servers: int, days: float, seed: int, scenario: str) -> tuple[float, int]:
    started = time.perf_counter()
    run = BatchRun(make_fleet(servers, seed), days, scenario=scenario)
    for _ in run.days():
        pass
    return time.perf_counter() - started, run.incidents().height


def generate_to_parquet(servers: int, days: float, seed: int, scenario: str, out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    run = BatchRun(make_fleet(servers, seed), days, scenario=scenario)
    write_parquet(run.frames(), out, overwrite=True)
    write_incidents(run.incidents(), out)
    return time.perf_counter() - started, run.n_steps * servers


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", choices=SCENARIO_NAMES, default="healthy")
    parser.add_argument("--out", type=Path, help="dataset folder to keep (default: a temporary one, removed)")
    args = parser.parse_args()
    print(f"{args.servers} servers x {args.days:g} days, scenario {args.scenario}, {os.cpu_count()} CPUs")
    sim_s, n_incidents = simulate_only(args.servers, args.days, args.seed, args.scenario)
    out = args.out or Path(tempfile.mkdtemp(prefix="wb-bench-"))
    try:
        total_s, rows = generate_to_parquet(args.servers, args.days, args.seed, args.scenario, out)
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"(a) simulate only      {sim_s:7.1f} s  {rows / sim_s:12,.0f} rows/s  {n_incidents:,} incidents")
    print(f"(b) simulate + parquet {total_s:7.1f} s  {rows / total_s:12,.0f} rows/s  {rows:,} rows, {size_mb:.0f} MB")
    print(f"peak resident memory   {peak_rss_gb():7.2f} GB")


if __name__ == "__main__":
    main()
