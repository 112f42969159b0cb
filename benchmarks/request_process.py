"""What the daemon's request process costs: import time, and resident memory before and after a forecast.

Only the forecast worker may load the model stack. This starts ``workbench serve`` (worker
mode, no state folder) on a free loopback port, feeds a simulated fleet, waits for a TFT
forecast and reports each process's resident memory and whether torch or numba's LLVM is
mapped into it; then times ``import workbench.service.inference_app`` in fresh interpreters.
Targets (issue 18): request process <= 200 MB resident, import <= 2 s.

    .venv/bin/python benchmarks/request_process.py [--bundle models/demo] [--servers 12] [--steps 300]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from workbench.service.generator_app import encode_step
from workbench.simulator import FleetStream

HEAVY_LIBRARIES = ("libtorch", "llvmlite")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in HEAVY_LIBRARIES if name in maps]


def wait_for_tft(base: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = httpx.get(base + "/predictions/current").json()
        if any(m["source"] == "tft" for s in doc.get("predictions", {}).values() for m in s.values()):
            return
        time.sleep(0.5)
    raise SystemExit("no TFT forecast within the timeout")


def import_seconds(repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import workbench.service.inference_app"], check=True)
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/demo")
    parser.add_argument("--servers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [sys.executable, "-m", "workbench.cli", "serve", "--bundle", args.bundle, "--port", str(port)]
    began = time.monotonic()
    proc = subprocess.Popen([*serve, "--no-state", "--log-level", "warning"])
    try:
        while True:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        print(f"healthy after {time.monotonic() - began:.1f} s; request process {resident_mb(proc.pid):.0f} MB")
        stream = FleetStream(args.servers, seed=3)
        for _ in range(args.steps):
            reply = httpx.post(base + "/feed/data", content=encode_step(next(stream)))
            reply.raise_for_status()
        wait_for_tft(base)
        print(f"after {args.servers} servers x {args.steps} steps and a TFT forecast:")
        print(f"  request process {resident_mb(proc.pid):.0f} MB, heavy libraries mapped: {mapped(proc.pid) or 'none'}")
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        for child in map(int, children):
            print(f"  forecast worker {resident_mb(child):.0f} MB, heavy libraries mapped: {mapped(child) or 'none'}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(f"import workbench.service.inference_app: {import_seconds():.2f} s (best of 3, fresh interpreters)")


if __name__ == "__main__":
    main()
