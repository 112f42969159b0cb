"""What ``GET /predictions/current`` costs a reader: bytes and time of each form for a large fleet.

Builds a synthetic forecast of ``--servers`` servers (seeded random quantile paths, a few
servers warming up), publishes it as the daemon does (``Documents.publish``: engine-free) and
prints, for the full document, its gzip form, the summary view, its gzip form, one server and
one profile, the bytes sent and the time to produce them: for the first request after a
forecast (encoding and compressing) and for later ones (unfiltered answers come from cached
bytes; filtered ones are spliced again). Then gzip's size and time at a few levels.

    .venv/bin/python benchmarks/read_sizes.py [--servers 1000] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections.abc import Callable

import numpy as np

from workbench import contract as c
from workbench.alert_rules import make_rule
from workbench.alerts import AlertTracker
from workbench.forecast import Forecast, postprocess
from workbench.risk import risk
from workbench.service.documents import Documents, Published
from workbench.service.reads import ReadQuery, ServerReads, summary_entries
from workbench.thresholds import Thresholds

LEVELS = (1, 3, 6, 9)


def synthetic_forecast(servers: int, seed: int = 0, warming: int = 5) -> Forecast:
    """A fleet of ``servers`` forecast servers (random walks around random levels) and ``warming`` warming up."""
    rng = np.random.default_rng(seed)
    targets = c.METRIC_NAMES
    m, h = len(targets), c.HORIZON_STEPS
    top = np.array([{"error_rate": 0.03, "latency_ms": 60.0}.get(t, 100.0) for t in targets])  # a metric's usual top
    level = top[None, :, None] * rng.uniform(0.05, 0.6, (servers, m, 1))
    p50 = level + top[None, :, None] * np.cumsum(rng.normal(0, 0.002, (servers, m, h)), axis=2)
    spread = level * rng.uniform(0.02, 0.15, (servers, m, 1)) * np.sqrt(np.arange(1, h + 1) / h)
    raw = np.stack([p50 - spread, p50, p50 + spread], axis=-1)
    names = [f"ppweb{i:05d}" if i % 3 else f"ppdb{i:05d}" for i in range(servers)]
    return Forecast(
        servers=names,
        profiles=[c.infer_profile(n) for n in names],
        targets=targets,
        last_step=np.full(servers, 10_000, dtype=np.int64),
        quantiles=postprocess(raw, targets),
        current=level[..., 0],
        warming_up={f"ppml{i:05d}": 3 for i in range(warming)},
        min_history=12,
    )


def publish(forecast: Forecast) -> Published:
    """Publish ``forecast`` as the daemon does (alerts, risk, every document)."""
    thresholds = Thresholds()
    documents = Documents(forecast.targets, forecast.horizon, thresholds, {"model_type": "TFT", "bundle": "synthetic"})
    alerts = AlertTracker(make_rule("band_edge", None)).update(forecast, thresholds).active
    return documents.publish(forecast, alerts, risk(forecast, thresholds), version=1)


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    return best


def fresh(reads: ServerReads) -> ServerReads:
    """A copy of ``reads`` with nothing cached (no compressed body, no summary, no index)."""
    return ServerReads(**{name: getattr(reads, name) for name in reads.__dataclass_fields__})


def forms(reads: ServerReads) -> dict[str, tuple[ReadQuery, bool]]:
    """The answers measured: ``{name: (query, accept gzip)}``."""
    one = ReadQuery(servers=(reads.servers[0],))
    return {
        "full": (ReadQuery(), False),
        "full gzip": (ReadQuery(), True),
        "summary": (ReadQuery("summary"), False),
        "summary gzip": (ReadQuery("summary"), True),
        "one server": (one, False),
        "one server gzip": (one, True),
        "one profile (database)": (ReadQuery(profiles=("database",)), False),
        "one profile gzip": (ReadQuery(profiles=("database",)), True),
    }


def rows(reads: ServerReads, repeats: int) -> list[tuple[str, int, float, float]]:
    """``(form, bytes, first seconds, later seconds)``: the first answer of a forecast, then the next ones."""
    out = []
    for name, (query, accept) in forms(reads).items():
        first = best_seconds(lambda query=query, accept=accept: fresh(reads).answer(query, accept), repeats)
        warm = fresh(reads)
        body, _ = warm.answer(query, accept)
        later = best_seconds(lambda warm=warm, query=query, accept=accept: warm.answer(query, accept), repeats)
        out.append((name, len(body), first, later))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000, help="forecast servers")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    forecast = synthetic_forecast(args.servers, args.seed)
    began = time.perf_counter()
    published = publish(forecast)
    assert published.reads is not None
    reads = published.reads
    print(f"{args.servers:,} servers; publish (alerts, risk, every document) {time.perf_counter() - began:.3f} s")
    members = best_seconds(lambda: summary_entries(forecast, reads.profiles), args.repeats)
    print(f"of which the summary view's members: {members * 1000:.1f} ms\n")
    full = len(published.body)
    print(f"{'form':<24} {'bytes':>12} {'of full':>8} {'first ms':>9} {'later ms':>9}")
    for name, size, first, later in rows(reads, args.repeats):
        print(f"{name:<24} {size:>12,} {size / full:>8.1%} {first * 1000:>9.1f} {later * 1000:>9.2f}")
    print(f"\n{'gzip level (full)':<24} {'bytes':>12} {'of full':>8} {'ms':>9}")
    for level in LEVELS:
        size = len(gzip.compress(published.body, compresslevel=level, mtime=0))
        seconds = best_seconds(lambda level=level: gzip.compress(published.body, compresslevel=level, mtime=0), 1)
        print(f"{level:<24} {size:>12,} {size / full:>8.1%} {seconds * 1000:>9.1f}")


if __name__ == "__main__":
    main()
