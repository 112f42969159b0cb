"""The inference engine: rolling windows in, a batched TFT forecast of the whole fleet out.

The fast path never builds a ``TimeSeriesDataSet``, a dataloader or a Lightning ``Trainer``:
it reads the windows, builds the network's tensors (:mod:`workbench.inference.inputs`) and
calls the network in batches under ``torch.inference_mode()``, on CPU or CUDA.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
import torch

from workbench import contract as c
from workbench.forecast import RECENT_STEPS, Forecast, history_baseline, postprocess
from workbench.inference.inputs import build_inputs
from workbench.inference.speedups import optimise
from workbench.inference.window import IngestReport, WarmupStatus, Windows, WindowStore
from workbench.model.bundle import Bundle
from workbench.model.network import stack_targets


class Engine:
    """Holds the fleet's windows and forecasts every ready server with one bundle."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        batch_size: int | None = None,
        max_gap_steps: int = c.MAX_GAP_STEPS,
        max_servers: int = 100_000,
        fast: bool = True,
        workers: int | None = None,
    ) -> None:
        """Create an engine around a loaded bundle.

        Args:
            bundle: The model; its network stays on the device it was loaded to.
            batch_size: Servers per network call (default: 128 on CPU, where smaller batches stay
                in cache, and 1024 on GPUs).
            max_gap_steps: Longest gap carried forward before a server's warm-up restarts.
            max_servers: Most servers held in memory.
            fast: Apply the output-preserving speed-ups of :mod:`workbench.inference.speedups`.
            workers: Batches run at once on CPU, each in its own thread with an equal share of
                torch's threads (default: one worker per torch thread). The network's many small
                kernels scale poorly across threads inside one call (and OpenMP barriers stall
                badly on a busy machine); separate batches on separate threads do not.
        """
        self.bundle = bundle
        self.spec = bundle.spec
        self.network = optimise(bundle.network) if fast else bundle.network
        self.device = next(self.network.parameters()).device
        self.batch_size = batch_size or (128 if self.device.type == "cpu" else 1024)
        self.store = WindowStore(
            self.spec.max_encoder_length, self.spec.targets, max_gap_steps=max_gap_steps, max_servers=max_servers
        )
        self.last_seconds = 0.0
        threads = torch.get_num_threads()
        self.workers = 1 if self.device.type != "cpu" else max(1, workers or threads)
        self._pool: ThreadPoolExecutor | None = None
        self._threads_per_worker = max(1, threads // self.workers)

    def ingest(self, frame: pl.DataFrame) -> IngestReport:
        """Add validated contract rows to the windows (see :meth:`WindowStore.ingest`)."""
        return self.store.ingest(frame)

    def warmup(self) -> WarmupStatus:
        """Return per-server and fleet warm-up progress."""
        hist = self.store.histories()
        need = self.spec.min_encoder_length
        return WarmupStatus(need, hist, sum(1 for n in hist.values() if n >= need))

    def forecast(self, servers: list[str] | None = None, *, store: WindowStore | None = None) -> Forecast:
        """Forecast ``servers`` that have enough history; list the others as warming up.

        Args:
            servers: Which servers (default: all held).
            store: The windows to read (default: the engine's own, fed by :meth:`ingest`); a
                caller that keeps its own windows (the daemon's forecaster, the command line)
                passes them here, and the engine's own are left as they are.

        Raises:
            ValueError: when ``store`` holds other metrics or fewer steps than the model reads.
        """
        started = time.perf_counter()
        store = self.store if store is None else self._check(store)
        need = self.spec.min_encoder_length
        readiness = store.readiness(servers, need, self.spec.max_encoder_length)
        windows = readiness.windows
        if readiness.missing:
            windows = _select(windows, readiness.forecastable)
        raw = self.predict(windows)
        self.last_seconds = time.perf_counter() - started
        return Forecast(
            servers=windows.servers,
            profiles=windows.profiles,
            targets=self.spec.targets,
            last_step=windows.last_step,
            quantiles=postprocess(raw, self.spec.targets),
            current=_current(windows),
            warming_up=readiness.warming_up,
            missing=readiness.missing,
            min_history=need,
            recent=windows.last_steps(RECENT_STEPS),
            levels=tuple(self.bundle.config.quantiles),
            baseline=history_baseline(windows.values, windows.lengths),
        )

    def _check(self, store: WindowStore) -> WindowStore:
        if tuple(store.metrics) != tuple(self.spec.targets) or store.capacity < self.spec.max_encoder_length:
            raise ValueError(
                f"windows of {list(store.metrics)} x {store.capacity} steps do not fit a model of "
                f"{list(self.spec.targets)} x {self.spec.max_encoder_length} steps"
            )
        return store

    def predict(self, windows: Windows) -> np.ndarray:
        """Run the network on windows in batches; return ``(servers, targets, horizon, 3)`` quantiles.

        The bundle's band calibration, when it has one, is applied; nothing is clipped yet.
        """
        n_targets, h = len(self.spec.targets), self.spec.horizon
        out = np.empty((len(windows.servers), n_targets, h, 3), dtype=np.float32)
        parts = _batches(len(windows.servers), self.batch_size, self.workers)

        def run(part: slice) -> None:
            with torch.inference_mode():
                x = build_inputs(_select(windows, part), self.spec, self.bundle.hparams, self.device)
                out[part] = stack_targets(self.network(x)["prediction"]).cpu().numpy()

        if self.workers > 1 and len(parts) > 1:
            list(self._executor().map(run, parts))
        else:
            for part in parts:
                run(part)
        return out if self.bundle.calibration is None else self.bundle.calibration.apply(out)

    def close(self) -> None:
        """Stop the engine's batch threads (a later forecast starts them again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.workers,
                thread_name_prefix="engine",
                initializer=_limit_threads,
                initargs=(self._threads_per_worker,),
            )
        return self._pool


def _batches(n: int, batch_size: int, workers: int) -> list[slice]:
    """Split ``n`` servers into near-equal batches of at most ``batch_size``, a multiple of ``workers`` of them."""
    count = -(-n // batch_size)
    count = min(n, -(-count // workers) * workers)
    bounds = np.linspace(0, n, count + 1).round().astype(int).tolist()
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def _limit_threads(threads: int) -> None:
    """Give a worker thread its share of torch's intra-op threads (a per-thread setting)."""
    torch.set_num_threads(threads)


def _select(windows: Windows, which: Any) -> Windows:
    idx = np.arange(len(windows.servers))[which]
    length = int(windows.lengths[idx].max()) if len(idx) else 0
    return Windows(
        servers=[windows.servers[i] for i in idx],
        profiles=[windows.profiles[i] for i in idx],
        values=windows.values[idx, :length],
        lengths=windows.lengths[idx],
        last_step=windows.last_step[idx],
    )


def _current(windows: Windows) -> np.ndarray:
    rows = np.arange(len(windows.servers))
    return windows.values[rows, windows.lengths - 1].astype(np.float64)
