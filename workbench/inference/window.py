"""Rolling per-server windows on the step grid, fed by samples at any cadence.

Each server owns one row of fixed-size ring buffers (``capacity`` steps × metrics), indexed
by ``step % capacity``, so memory is bounded by ``max_servers × capacity × metrics`` whatever
the fleet does. Samples within a step are combined with the contract's aggregation (mean or
max); late samples inside the window are merged into their step; duplicates of a sample do not
change a mean or a max. Steps without data inside a short gap are carried forward when read;
a gap longer than ``max_gap_steps`` restarts that server's history (and its warm-up).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.inference.lazy_jit import lazy_njit

_PROFILE_CODES = {p: i for i, p in enumerate(c.PROFILES)}


@dataclass
class IngestReport:
    """What one :meth:`WindowStore.ingest` call did.

    Attributes:
        samples: Samples received.
        steps: Distinct (server, step) buckets they fell into.
        new_servers: Servers seen for the first time.
        restarted: Servers whose history restarted after a gap longer than the limit.
        gap_steps: Servers with steps missing inside an allowed gap, and how many (carried forward).
        too_old: Samples older than the window (or than a restart), dropped.
        evicted: Servers dropped to keep memory bounded.
        refused: New servers not admitted: the store was full of servers of this same batch.
        refused_samples: Samples of the refused servers, dropped.
    """

    samples: int = 0
    steps: int = 0
    new_servers: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    gap_steps: dict[str, int] = field(default_factory=dict)
    too_old: int = 0
    evicted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    refused_samples: int = 0


@dataclass
class Windows:
    """Read-out of some servers' windows, left-aligned (index 0 is the oldest step used).

    Attributes:
        servers: Server names, one per row.
        profiles: Their profiles.
        values: ``(servers, length, metrics)``; rows past ``lengths`` are zero.
        lengths: Steps of history in each row.
        last_step: Global step index of each server's last step.
    """

    servers: list[str]
    profiles: list[str]
    values: np.ndarray
    lengths: np.ndarray
    last_step: np.ndarray

    def last_steps(self, steps: int) -> np.ndarray:
        """Return ``(servers, steps, metrics)``: each server's last ``steps`` values, NaN before its first."""
        idx = self.lengths[:, None] - steps + np.arange(steps)[None, :]
        out = self.values[np.arange(len(self.servers))[:, None], np.maximum(idx, 0)].astype(np.float64)
        out[idx < 0] = np.nan
        return out


@dataclass
class Readiness:
    """Which servers a model can forecast now, by the engine's rule, and the windows it would read.

    Attributes:
        warming_up: Servers with less history than needed, and the steps each has.
        windows: The windows of the servers with enough history.
        absent: ``(servers of windows, metrics)``: a metric with no value in the window.
        missing: Servers with enough history that lack a metric, and which.
    """

    warming_up: dict[str, int]
    windows: Windows
    absent: np.ndarray
    missing: dict[str, list[str]]

    @property
    def forecastable(self) -> np.ndarray:
        """Mask over ``windows``: every metric has a value."""
        return np.asarray(~self.absent.any(axis=1))


class WindowStore:
    """Per-server ring buffers of the last ``capacity`` steps of each metric."""

    def __init__(
        self,
        capacity: int,
        metrics: tuple[str, ...] = c.METRIC_NAMES,
        *,
        max_gap_steps: int = c.MAX_GAP_STEPS,
        max_servers: int = 100_000,
    ) -> None:
        """Create an empty store.

        Args:
            capacity: Steps kept per server (the model's longest encoder).
            metrics: Metrics kept, in column order.
            max_gap_steps: Longest run of missing steps that is carried forward; a longer gap
                restarts the server's history.
            max_servers: Most servers held; a new one beyond it evicts the server that sent
                least recently (O(1): the servers are kept in order of their last arrival).
        """
        self.capacity = capacity
        self.metrics = tuple(c.check_metric_names(metrics))
        self.max_gap_steps = max_gap_steps
        self.max_servers = max_servers
        self._is_max = np.array([c.METRIC_BY_NAME[m].aggregation == "max" for m in self.metrics])
        self._names: list[str | None] = []
        self._index: OrderedDict[str, int] = OrderedDict()  # least recently arrived first
        self._tick = 0  # ingest calls so far: the arrival clock (replays the same from the log)
        self._free: list[int] = []
        m = len(self.metrics)
        self._sum = np.zeros((0, capacity, m), dtype=np.float64)
        self._cnt = np.zeros((0, capacity, m), dtype=np.int32)
        self._max = np.zeros((0, capacity, m), dtype=np.float64)
        self._last = np.zeros(0, dtype=np.int64)
        self._profile = np.zeros(0, dtype=np.int16)
        self._seen = np.zeros(0, dtype=np.int64)  # tick of each row's last arrival
        self._alloc(16)

    # ------------------------------------------------------------------ storage

    def _alloc(self, rows: int) -> None:
        """Grow every per-server array to ``rows`` rows; new rows are empty and free."""
        old = len(self._names)
        cap, m = self.capacity, len(self.metrics)
        self._sum = _grow(self._sum, (rows, cap, m), 0.0)
        self._cnt = _grow(self._cnt, (rows, cap, m), 0)
        self._max = _grow(self._max, (rows, cap, m), -np.inf)
        self._last = _grow(self._last, (rows,), -1)
        self._profile = _grow(self._profile, (rows,), 0)
        self._seen = _grow(self._seen, (rows,), 0)
        self._names.extend([None] * (rows - old))
        self._free.extend(range(rows - 1, old - 1, -1))

    def _slot(self, name: str, report: IngestReport) -> int | None:
        """The row of ``name``, admitting it when new; ``None`` when the store is full of this batch's servers."""
        slot = self._index.get(name)
        if slot is not None:
            self._index.move_to_end(name)
            self._seen[slot] = self._tick
            return slot
        if len(self._index) >= self.max_servers:
            oldest = next(iter(self._index))
            if self._seen[self._index[oldest]] == self._tick:  # every server held sent in this batch
                report.refused.append(name)
                return None
            self._evict(oldest, report)
        if not self._free:
            self._alloc(min(max(2 * len(self._names), 16), max(self.max_servers, 16)))
        slot = self._free.pop()
        self._index[name] = slot
        self._names[slot] = name
        self._seen[slot] = self._tick
        report.new_servers.append(name)
        return slot

    @property
    def tick(self) -> int:
        """Ingest calls so far (the clock of :meth:`evict_idle`)."""
        return self._tick

    def evict_idle(self, before_tick: int) -> list[str]:
        """Evict every server whose last arrival came before ``before_tick``; O(evicted).

        The daemon maps wall-clock idleness onto ticks (see :class:`~workbench.service.ingest.Ingestor`):
        data time cannot say a server is idle, since a replay of old data is as live as new data.
        """
        report = IngestReport()
        while self._index:
            oldest = next(iter(self._index))
            if self._seen[self._index[oldest]] >= before_tick:
                break
            self._evict(oldest, report)
        return report.evicted

    def _evict(self, name: str, report: IngestReport) -> None:
        slot = self._index.pop(name)
        self._names[slot] = None
        self._clear(np.array([slot]), np.ones((1, self.capacity), dtype=bool))
        self._last[slot] = -1
        self._free.append(slot)
        report.evicted.append(name)

    def _clear(self, slots: np.ndarray, mask: np.ndarray) -> None:
        rows, pos = np.nonzero(mask)
        self._sum[slots[rows], pos] = 0.0
        self._cnt[slots[rows], pos] = 0
        self._max[slots[rows], pos] = -np.inf

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, np.ndarray]:
        """Return copies of everything the store holds, as plain numpy arrays (no object dtype).

        The result can be written with ``np.savez`` and read back with ``allow_pickle=False``;
        :meth:`from_state` rebuilds an identical store from it. Free rows have the name ``""``
        (never a valid server name).
        """
        return {
            "sum": self._sum.copy(),
            "cnt": self._cnt.copy(),
            "max": self._max.copy(),
            "last": self._last.copy(),
            "profile": self._profile.copy(),
            "names": np.array(["" if n is None else n for n in self._names], dtype=np.str_),
            "free": np.array(self._free, dtype=np.int64),
            "order": np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index)),
            "seen": self._seen.copy(),
            "metrics": np.array(self.metrics, dtype=np.str_),
            "settings": np.array([self.capacity, self.max_gap_steps, self.max_servers, self._tick], np.int64),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> WindowStore:
        """Rebuild a store from :meth:`state`; the arrays are used as given, not copied.

        Raises:
            ValueError: when the arrays are missing, of the wrong type or inconsistent.
        """
        keys = {"sum", "cnt", "max", "last", "profile", "seen", "names", "free", "order", "metrics", "settings"}
        missing = sorted(keys - set(state))
        if missing:
            raise ValueError(f"window state lacks {', '.join(missing)}")
        capacity, max_gap, max_servers, tick = (int(v) for v in state["settings"])
        store = cls(capacity, tuple(str(m) for m in state["metrics"]), max_gap_steps=max_gap, max_servers=max_servers)
        names = [str(n) or None for n in state["names"]]
        rows, m = len(names), len(store.metrics)
        arrays = {
            "sum": np.float64, "cnt": np.int32, "max": np.float64, "last": np.int64, "profile": np.int16,
            "seen": np.int64,
        }  # fmt: skip
        for key, dtype in arrays.items():
            shape = (rows, capacity, m) if key in ("sum", "cnt", "max") else (rows,)
            if state[key].shape != shape or state[key].dtype != dtype:
                raise ValueError(f"window state {key!r}: {state[key].dtype}{state[key].shape}, expected {shape}")
        free = [int(s) for s in state["free"]]
        order = [int(s) for s in state["order"]]
        named = [s for s, n in enumerate(names) if n is not None]
        if sorted(free) != [s for s, n in enumerate(names) if n is None] or sorted(order) != named:
            raise ValueError("window state: free rows, server order and server names disagree")
        if len(set(names) - {None}) != len(named):
            raise ValueError("window state: a server name appears twice")
        if rows and not 0 <= int(state["profile"].min()) <= int(state["profile"].max()) < len(c.PROFILES):
            raise ValueError("window state: unknown profile code")
        store._sum, store._cnt, store._max = state["sum"], state["cnt"], state["max"]
        store._last, store._profile, store._seen = state["last"], state["profile"], state["seen"]
        store._names, store._free, store._tick = names, free, tick
        store._index = OrderedDict((str(names[s]), s) for s in order)
        return store

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring buffers."""
        return int(self._sum.nbytes + self._cnt.nbytes + self._max.nbytes)

    @property
    def server_count(self) -> int:
        """Servers currently held (O(1), unlike ``len(servers)``)."""
        return len(self._index)

    @property
    def servers(self) -> list[str]:
        """Servers currently held."""
        return list(self._index)

    # ------------------------------------------------------------------ writing

    def ingest(self, frame: pl.DataFrame) -> IngestReport:
        """Add validated contract rows (any cadence, any order) to the windows.

        Args:
            frame: Rows that passed :func:`workbench.contract.validate` (or ``validate_records``).

        Returns:
            What happened: new servers, restarts, carried-forward gaps, dropped samples.
        """
        report = IngestReport(samples=frame.height)
        self._tick += 1
        if frame.height == 0:
            return report
        buckets = self._bucket(frame)
        report.steps = buckets.height
        names = buckets[c.SERVER].to_list()
        distinct = list(dict.fromkeys(names))
        newcomers = [n for n in distinct if n not in self._index]
        for name in distinct:  # the batch's known servers first: a newcomer never evicts one of them
            if name in self._index:
                self._slot(name, report)
        for name in newcomers:
            self._slot(name, report)
        slot_of = {n: self._index[n] for n in distinct if n in self._index}
        if report.refused:
            refused = set(report.refused)
            report.refused_samples = int(buckets.filter(pl.col(c.SERVER).is_in(refused))["samples"].sum())
            buckets = buckets.filter(~pl.col(c.SERVER).is_in(refused))
            names = buckets[c.SERVER].to_list()
        slots = np.fromiter((slot_of[n] for n in names), dtype=np.int64, count=len(names))
        steps = buckets["step"].to_numpy().astype(np.int64)
        last_rows = buckets.select(c.SERVER, c.PROFILE).unique(c.SERVER, keep="last")
        for name, profile in last_rows.iter_rows():
            self._profile[slot_of[name]] = _PROFILE_CODES.get(profile, _PROFILE_CODES[c.DEFAULT_PROFILE])
        last = self._advance(slots, steps, report)
        accept = steps > last[slots] - self.capacity
        report.too_old = int(buckets["samples"].to_numpy()[~accept].sum())
        pos = steps[accept] % self.capacity
        rows = slots[accept]
        m = len(self.metrics)
        block = buckets.select(pl.exclude(c.SERVER, c.PROFILE, "step", "samples")).to_numpy()[accept]
        self._sum[rows, pos] += block[:, :m]
        self._cnt[rows, pos] += block[:, m : 2 * m].astype(np.int32)
        self._max[rows, pos] = np.fmax(self._max[rows, pos], block[:, 2 * m :])
        self._last = last
        return report

    def _bucket(self, frame: pl.DataFrame) -> pl.DataFrame:
        present = [m for m in self.metrics if m in frame.columns]
        data = frame.with_columns(*(pl.lit(None, pl.Float64).alias(m) for m in self.metrics if m not in present))
        return (
            data.group_by(c.SERVER, (pl.col(c.TIMESTAMP).dt.epoch("s") // c.STEP_SECONDS).alias("step"))
            .agg(
                pl.col(c.PROFILE).last(),
                pl.len().alias("samples"),
                *(pl.col(m).sum().alias(f"sum_{m}") for m in self.metrics),
                *(pl.col(m).count().alias(f"cnt_{m}") for m in self.metrics),
                *(pl.col(m).max().fill_null(-np.inf).alias(f"max_{m}") for m in self.metrics),
            )
            .sort(c.SERVER, "step")
        )

    def _advance(self, slots: np.ndarray, steps: np.ndarray, report: IngestReport) -> np.ndarray:
        """Move each server's last step forward, report gaps and restarts, clear the reused positions."""
        old_last = self._last.copy()
        last = self._last.copy()
        new = steps > old_last[slots]
        ns, st = slots[new], steps[new]  # sorted by server then step
        prev = np.empty_like(st)
        prev[1:] = st[:-1]
        boundary = np.ones(len(st), dtype=bool)
        boundary[1:] = ns[1:] != ns[:-1]
        prev[boundary] = old_last[ns[boundary]]
        gap = st - prev - 1
        restart = (prev < 0) | (gap > self.max_gap_steps)
        np.maximum.at(last, ns, st)
        for slot in np.unique(ns[restart & (prev >= 0)]):
            report.restarted.append(str(self._names[slot]))
        filled = ~restart & (gap > 0)
        gaps = np.zeros(len(self._names), dtype=np.int64)
        np.add.at(gaps, ns[filled], gap[filled])
        for slot in np.nonzero(gaps)[0]:
            report.gap_steps[str(self._names[slot])] = int(gaps[slot])
        moved = np.unique(ns)
        advance = np.minimum(last[moved] - old_last[moved], self.capacity)
        advance[old_last[moved] < 0] = self.capacity
        offset = (np.arange(self.capacity)[None, :] - (old_last[moved] + 1)[:, None]) % self.capacity
        self._clear(moved, offset < advance[:, None])
        return last

    # ------------------------------------------------------------------ reading

    def history(self, name: str) -> int:
        """Return the steps of usable history of ``name`` (0 for an unknown server), capped at capacity."""
        slot = self._index.get(name)
        return 0 if slot is None else int(self._histories(np.array([slot]))[0])

    def last_steps(self, names: list[str]) -> np.ndarray:
        """Each name's newest step (-1 for a server not held)."""
        slots = [self._index.get(n) for n in names]
        return np.array([-1 if s is None else int(self._last[s]) for s in slots], dtype=np.int64)

    def histories(self) -> dict[str, int]:
        """Return :meth:`history` of every server held."""
        slots = np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index))
        return dict(zip(self._index, self._histories(slots).tolist(), strict=True))

    def _histories(self, slots: np.ndarray) -> np.ndarray:
        """Steps from the start of each server's current run (after its last long gap) to its last step.

        Derived from which steps hold data, so samples arriving out of order extend a history
        backwards just as in-order ones extend it forwards.
        """
        out = np.empty(len(slots), dtype=np.int64)
        _run_lengths(np.asarray(slots, dtype=np.int64), self._last, self._cnt, self.max_gap_steps, out)
        return out

    def readiness(self, names: list[str] | None, min_history: int, length: int) -> Readiness:
        """Split ``names`` (default: all held) into warming up, lacking a metric, and forecastable.

        A server is ready when its current run of history (:meth:`histories`) reaches
        ``min_history``; its window of ``length`` steps is read, and a metric still NaN at the
        first step has no value in it (reading fills every gap).
        """
        hist = self.histories()
        held = list(hist) if names is None else [s for s in names if s in hist]
        ready = [s for s in held if hist[s] >= min_history]
        windows = self.windows(ready, length, np.array([hist[s] for s in ready], dtype=np.int64))
        absent = np.isnan(windows.values[:, 0, :]) if ready else np.zeros((0, len(self.metrics)), bool)
        missing = {
            s: [m for m, a in zip(self.metrics, row, strict=True) if a]
            for s, row in zip(ready, absent, strict=True)
            if row.any()
        }
        return Readiness({s: hist[s] for s in held if hist[s] < min_history}, windows, absent, missing)

    def windows(self, names: list[str], length: int, history: np.ndarray | None = None) -> Windows:
        """Return the last ``length`` steps (fewer when history is shorter) of ``names``.

        Missing steps and values are carried forward from the previous step (a leading gap is
        filled from the first value); a metric with no value in the whole window stays NaN.
        ``history`` passes :meth:`histories` values already computed for ``names``.
        """
        slots = np.array([self._index[n] for n in names], dtype=np.int64)
        hist = self._histories(slots) if history is None else np.asarray(history, dtype=np.int64)
        lengths = np.minimum(hist, min(length, self.capacity))
        values = np.empty((len(slots), length, len(self.metrics)), dtype=np.float64)
        read = _read_few if len(slots) <= READ_NUMPY_SERVERS else _read
        read(slots, lengths, self._last, self._sum, self._cnt, self._max, self._is_max, values)
        profiles = [c.PROFILES[int(p)] for p in self._profile[slots]]
        return Windows(list(names), profiles, values, lengths.astype(np.int64), self._last[slots].copy())


@dataclass(frozen=True)
class WarmupStatus:
    """Warm-up progress of the fleet.

    Attributes:
        needed_steps: Steps a server needs before it is forecast.
        servers: Steps each server has (capped at ``needed_steps``).
        ready: Servers with enough history.
    """

    needed_steps: int
    servers: dict[str, int]
    ready: int

    @property
    def total(self) -> int:
        """Servers known."""
        return len(self.servers)

    @property
    def progress(self) -> float:
        """Fleet progress in [0, 1]: the mean of each server's progress (1 when the fleet is empty)."""
        if not self.servers:
            return 1.0
        return float(np.mean([min(n, self.needed_steps) / self.needed_steps for n in self.servers.values()]))

    def to_json(self) -> dict[str, Any]:
        """Return the status as the REST ``warmup`` object."""
        return {
            "is_warmed_up": self.total > 0 and self.ready == self.total,
            "progress_percent": round(100 * self.progress, 1),
            "threshold": self.needed_steps,
            "ready_servers": self.ready,
            "total_servers": self.total,
            "servers": {s: min(n, self.needed_steps) for s, n in self.servers.items()},
        }


def _grow(array: np.ndarray, shape: tuple[int, ...], fill: float) -> np.ndarray:
    out = np.full(shape, fill, dtype=array.dtype)
    out[: len(array)] = array
    return out


RUN_LENGTH_CHUNK = 4096  # servers per vectorised block: bounds the (servers, steps, metrics) gather
# Up to this many servers numpy answers in tens of milliseconds; beyond, a compiled pass is ~10x
# faster and worth loading numba for (the request process of a small fleet never loads it).
RUN_LENGTH_NUMPY_SERVERS = 20_000
# A few servers' windows (the daemon's /history for one chart) are read in numpy; the engine's
# reads of whole fleets use the compiled kernel.
READ_NUMPY_SERVERS = 32


def _run_lengths(slots: np.ndarray, last: np.ndarray, cnt: np.ndarray, max_gap: int, out: np.ndarray) -> None:
    """Write :meth:`WindowStore._histories` of ``slots`` to ``out``, vectorised over servers.

    Plain numpy (no compiled kernel), so the daemon's request process, which asks for warm-up
    progress but never reads a window, does not load numba; past
    :data:`RUN_LENGTH_NUMPY_SERVERS` servers the compiled pass is used.
    """
    if len(slots) > RUN_LENGTH_NUMPY_SERVERS:
        _run_lengths_compiled(slots, last, cnt, max_gap, out)
        return
    capacity = cnt.shape[1]
    t = np.arange(capacity)
    for at in range(0, len(slots), RUN_LENGTH_CHUNK):
        chunk = slots[at : at + RUN_LENGTH_CHUNK]
        steps = last[chunk][:, None] - capacity + 1 + t  # oldest step first
        held = (cnt[chunk] > 0).any(axis=2)  # (servers, ring positions)
        present = np.take_along_axis(held, steps % capacity, axis=1) & (steps >= 0)
        seen = np.where(present, t, -1)
        before = np.maximum.accumulate(np.concatenate([np.full((len(chunk), 1), -1), seen[:, :-1]], axis=1), axis=1)
        starts = present & ((before < 0) | (t - before - 1 > max_gap))
        start = np.where(starts, t, -1).max(axis=1, initial=-1)
        out[at : at + len(chunk)] = np.where(start >= 0, capacity - start, 0)


@lazy_njit
def _run_lengths_compiled(slots: np.ndarray, last: np.ndarray, cnt: np.ndarray, max_gap: int, out: np.ndarray) -> None:
    """:func:`_run_lengths` as one compiled pass over each ring (large fleets)."""
    capacity, metrics = cnt.shape[1], cnt.shape[2]
    for i, slot in enumerate(slots):
        start, prev = -1, -1
        for t in range(capacity):  # oldest step first
            step = last[slot] - capacity + 1 + t
            if step < 0:
                continue
            pos = step % capacity
            present = False
            for m in range(metrics):
                present = present or cnt[slot, pos, m] > 0
            if present:
                if prev < 0 or t - prev - 1 > max_gap:
                    start = t
                prev = t
        out[i] = capacity - start if start >= 0 else 0


def _read_few(
    slots: np.ndarray,
    lengths: np.ndarray,
    last: np.ndarray,
    sums: np.ndarray,
    cnt: np.ndarray,
    maxes: np.ndarray,
    is_max: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`_read` in numpy, one server at a time, vectorised over steps and metrics (same values)."""
    capacity = cnt.shape[1]
    out[:] = 0.0
    for i, slot in enumerate(slots):
        n = int(lengths[i])
        if n <= 0:
            continue
        pos = (last[slot] - n + 1 + np.arange(n)) % capacity
        count = cnt[slot, pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(is_max, maxes[slot, pos], sums[slot, pos] / count)
        value = np.where(count == 0, np.nan, value)
        known = ~np.isnan(value)
        latest = np.maximum.accumulate(np.where(known, np.arange(n)[:, None], -1), axis=0)
        first = np.where(known.any(axis=0), known.argmax(axis=0), 0)
        source = np.where(latest >= 0, latest, first)  # carried forward; leading steps from the first value
        out[i, :n] = np.take_along_axis(value, source, axis=0)


@lazy_njit
def _read(
    slots: np.ndarray,
    lengths: np.ndarray,
    last: np.ndarray,
    sums: np.ndarray,
    cnt: np.ndarray,
    maxes: np.ndarray,
    is_max: np.ndarray,
    out: np.ndarray,
) -> None:
    """Write the left-aligned windows of ``slots`` to ``out`` ``(servers, length, metrics)``.

    Each step's value is its samples' max or mean. A step without one takes the previous step's
    value; leading steps without one take the first value; a metric with no value in the window
    stays NaN; steps past a server's length are zero.
    """
    capacity = cnt.shape[1]
    length, metrics = out.shape[1], out.shape[2]
    for i, slot in enumerate(slots):
        n = lengths[i]
        first = last[slot] - n + 1
        for m in range(metrics):
            carried, leading, pos = np.nan, 0, first % capacity
            for t in range(n):
                c = cnt[slot, pos, m]
                value = np.nan if c == 0 else (maxes[slot, pos, m] if is_max[m] else sums[slot, pos, m] / c)
                if np.isnan(value):
                    value = carried
                    if np.isnan(carried):
                        leading = t + 1
                carried = value
                out[i, t, m] = value
                pos = pos + 1 if pos + 1 < capacity else 0
            for t in range(min(leading, n)):  # back-fill the leading steps from the first value
                out[i, t, m] = carried if leading >= n else out[i, leading, m]
            for t in range(n, length):
                out[i, t, m] = 0.0
