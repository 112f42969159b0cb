"""Measure the inference daemon on loopback while its background predictions run.

Starts ``workbench serve`` in a subprocess, feeds a simulated fleet (default 1,000 servers, one
step per 1,000-record batch) from a few client threads for a bounded time, and meanwhile reads
``/predictions/current`` a few times a second. Prints sustained feed throughput (records/s),
p50/p99 latency of ``POST /feed/data`` and ``GET /predictions/current``, and the daemon's own
forecast figures. Without ``--bundle`` it saves an untrained network of the ``tiny`` preset
(timings do not depend on the weights). With ``--reload-at S`` it also hot-reloads a copy of the
bundle (``POST /admin/reload``) S seconds into the feed, and checks that every acknowledged
record is held: compare its feed p99 with a run without the option.

    .venv/bin/python benchmarks/service.py [--bundle models/fleet] [--servers 1000] [--seconds 20]
    .venv/bin/python benchmarks/service.py --reload-at 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import polars as pl

from workbench import contract as c
from workbench.service.generator_app import encode_step
from workbench.simulator import FleetStream


def untrained_tiny_bundle(out: Path) -> Path:
    from workbench.features import to_model_frame
    from workbench.model import Bundle, TrainConfig, save_bundle
    from workbench.model.dataset import DatasetSpec
    from workbench.model.network import network_from_dataset, network_hparams
    from workbench.simulator import generate

    config = TrainConfig.preset("tiny")
    frame = to_model_frame(generate(8, 2.0, seed=0), config.targets)
    spec = DatasetSpec.fit(frame, config)
    network = network_from_dataset(spec.build(frame), config, spec).eval()
    return save_bundle(Bundle(network, spec, config, network_hparams(network)), out)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def payloads(servers: int, batch: int, steps: int) -> tuple[list[bytes], list[str]]:
    """Bodies of ``steps`` steps (split into ``batch``-record bodies) and each body's timestamp string."""
    stream = FleetStream(servers, seed=1)
    bodies, stamps = [], []
    for _ in range(steps):
        frame = next(stream)
        stamp = frame[c.TIMESTAMP][0].strftime("%Y-%m-%dT%H:%M:%SZ")
        for part in frame.iter_slices(batch):
            bodies.append(encode_step(part))
            stamps.append(stamp)
    return bodies, stamps


def shifted(body: bytes, stamp: str, steps_later: int) -> bytes:
    """Return ``body`` moved ``steps_later`` steps forward (its one timestamp string replaced)."""
    later = pl.Series([stamp]).str.to_datetime("%Y-%m-%dT%H:%M:%SZ")[0]
    new = (later + np.timedelta64(steps_later * c.STEP_SECONDS, "s")).strftime("%Y-%m-%dT%H:%M:%SZ")
    return body.replace(stamp.encode(), new.encode())


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle folder (default: an untrained tiny-preset network)")
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000, help="records per POST")
    parser.add_argument("--seconds", type=float, default=20.0, help="feeding time")
    parser.add_argument("--clients", type=int, default=3, help="concurrent feeding connections")
    parser.add_argument("--reads-per-second", type=float, default=4.0)
    parser.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--interval", type=float, help="serve --interval (default: a forecast per new step)")
    parser.add_argument("--reload-at", type=float, help="hot-reload a copy of the bundle this many seconds in")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else untrained_tiny_bundle(Path(tmp) / "bundle")
        args.reload_bundle = shutil.copytree(bundle, Path(tmp) / "reloaded") if args.reload_at is not None else None
        print("preparing payloads ...", file=sys.stderr)
        cycle = 48
        bodies, stamps = payloads(args.servers, args.batch, cycle)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "workbench.cli", "serve", "--bundle", str(bundle), "--port", str(port)]
        cmd += ["--state-dir", str(Path(tmp) / "state"), "--log-level", "warning", "--device", "cpu"]
        cmd += [] if args.fsync else ["--no-fsync"]
        cmd += ["--interval", str(args.interval)] if args.interval else []
        daemon = subprocess.Popen(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        try:
            wait_healthy(base)
            result = run(base, bodies, stamps, cycle, args)
        finally:
            daemon.terminate()
            daemon.wait(30)
    print(json.dumps(result, indent=1))


def wait_healthy(base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the daemon did not start")


def run(base: str, bodies: list[bytes], stamps: list[str], cycle: int, args: argparse.Namespace) -> dict:
    per_step = len(bodies) // cycle
    counter = itertools.count()
    lock = threading.Lock()
    feed_lat: list[float] = []
    read_lat: list[float] = []
    accepted = [0]
    failures: list[str] = []
    stop = threading.Event()

    def feeder() -> None:
        with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
            while not stop.is_set():
                with lock:
                    k = next(counter)
                step, part = divmod(k, per_step)
                j = (step % cycle) * per_step + part
                body = bodies[j] if step < cycle else shifted(bodies[j], stamps[j], step - step % cycle)
                t0 = time.perf_counter()
                r = client.post(base + "/feed/data", content=body)
                dt = time.perf_counter() - t0
                with lock:
                    feed_lat.append(dt)
                    if r.status_code == 200:
                        accepted[0] += r.json()["records_added"]
                    else:
                        failures.append(f"{r.status_code}: {r.text[:200]}")

    def reader() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = client.get(base + "/predictions/current")
                read_lat.append(time.perf_counter() - t0)
                assert r.status_code == 200
                stop.wait(1 / args.reads_per_second)

    reloads: list[dict] = []

    def reloader() -> None:
        if stop.wait(args.reload_at):
            return
        t0 = time.perf_counter()
        r = httpx.post(base + "/admin/reload", json={"bundle": str(args.reload_bundle)}, timeout=600)
        reloads.append({"status": r.status_code, "seconds": round(time.perf_counter() - t0, 2), "at": args.reload_at})

    threads = [threading.Thread(target=feeder) for _ in range(args.clients)] + [threading.Thread(target=reader)]
    threads += [threading.Thread(target=reloader)] if args.reload_at is not None else []
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    status = httpx.get(base + "/status", timeout=30).json()
    held = status["ingest"]["records_total"]
    t0 = time.perf_counter()
    metrics = httpx.get(base + "/metrics", timeout=60)
    scrape = time.perf_counter() - t0
    last = httpx.get(base + "/predictions/current", timeout=30)
    meta = last.json()["metadata"]
    return {
        "servers": args.servers,
        "batch_records": args.batch,
        "clients": args.clients,
        "fsync": args.fsync,
        "interval": args.interval,
        "seconds": round(elapsed, 1),
        "records_accepted": accepted[0],
        "records_per_second": round(accepted[0] / elapsed),
        "feed_requests": len(feed_lat),
        "feed_failures": failures[:5],
        "records_held": held,
        "acknowledged_records_lost": accepted[0] - held,
        "reload": reloads[0] if reloads else None,
        "bundle_reloads": status["bundle"]["reloads"],
        "feed_p50_ms": round(pct(feed_lat, 50), 1),
        "feed_p99_ms": round(pct(feed_lat, 99), 1),
        "predictions_reads": len(read_lat),
        "predictions_p50_ms": round(pct(read_lat, 50), 1),
        "predictions_p99_ms": round(pct(read_lat, 99), 1),
        "predictions_body_mb": round(len(last.content) / 1e6, 1),
        "predictor": status["predictor"],
        "servers_forecast": meta["servers_forecast"],
        "metrics_scrape_ms": round(scrape * 1000),
        "metrics_lines": metrics.text.count("\n"),
    }


if __name__ == "__main__":
    main()
