"""Does a feed cost the same at 1,000 and 100,000 servers? The write path, in process, measured in the same run.

Fills an :class:`~workbench.service.ingest.Ingestor` (the code under the daemon's global ingest
lock: validate, log, add to the windows) to each fleet size, then times three feeds many times:
one record of a known server, a 1,000-record step of known servers, and 100 new servers (which,
at ``--max-servers``, each evict the least recently sent one); and the warm-up read behind
``/status`` (every server's history length: O(servers), shown for scale). Prints p50/p99 per size and the
ratio of the largest size to the smallest; the issue's target is p99 within 2x.

    .venv/bin/python benchmarks/ingest_scale.py [--sizes 1000 100000] [--repeats 200] [--capacity 96]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from workbench import contract as c
from workbench.inference.window import WindowStore
from workbench.service.ingest import Ingestor

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def records(names: list[str], when: datetime) -> list[dict]:
    stamp = when.isoformat()
    return [{"timestamp": stamp, "server_name": n, "cpu_pct": 40.0, "mem_pct": 50.0, "latency_ms": 20.0} for n in names]


def filled(size: int, capacity: int) -> Ingestor:
    store = WindowStore(capacity, c.METRIC_NAMES, max_servers=size)
    ingestor = Ingestor(store, None, max_future_seconds=None)
    for start in range(0, size, 10_000):
        ingestor.feed(records([f"s{i}" for i in range(start, min(size, start + 10_000))], T0))
    return ingestor


def timed(feed, repeats: int) -> tuple[float, float]:
    feed(repeats)  # warm-up: numba kernels compile on their first call
    seconds = []
    for k in range(repeats):
        started = time.perf_counter()
        feed(k)
        seconds.append(time.perf_counter() - started)
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def measure(size: int, capacity: int, repeats: int) -> dict[str, tuple[float, float]]:
    ingestor = filled(size, capacity)
    rng = np.random.default_rng(0)
    step = timedelta(seconds=c.STEP_SECONDS)
    out = {
        "1 record, known server": timed(
            lambda k: ingestor.feed(records([f"s{rng.integers(size)}"], T0 + (k + 1) * step)), repeats
        ),
        "1,000 records, known servers": timed(
            lambda k: ingestor.feed(records([f"s{i}" for i in rng.integers(size, size=1000)], T0 + (k + 1) * step)),
            repeats,
        ),
        "100 new servers (evicting at capacity)": timed(
            lambda k: ingestor.feed(records([f"new{k}-{i}" for i in range(100)], T0 + (k + 1) * step)), repeats
        ),
    }
    out["/status warm-up read (all servers' histories)"] = timed(lambda k: ingestor.store.histories(), 20)
    assert len(ingestor.store.servers) == size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--capacity", type=int, default=96, help="steps per server (the demo model's window)")
    args = parser.parse_args()
    results = {size: measure(size, args.capacity, args.repeats) for size in args.sizes}
    small, large = min(results), max(results)
    print(f"feed latency (ms, p50 / p99), {args.repeats} feeds each, window of {args.capacity} steps")
    for case in results[small]:
        cells = "  ".join(f"{size:>7,}: {res[case][0]:7.2f} / {res[case][1]:7.2f}" for size, res in results.items())
        ratio = results[large][case][1] / results[small][case][1]
        print(f"  {case:<40} {cells}   p99 x{ratio:.2f}")


if __name__ == "__main__":
    main()
