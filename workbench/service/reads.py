"""Cheap reads of ``GET /predictions/current``: some servers at a time, a summary view, gzip.

A forecast's document is encoded once per forecast (:func:`encode_document`), which also notes
where each server's ``predictions`` and ``server_risk`` members lie in it (:class:`ServerReads`).
A filtered document is spliced from slices of those bytes, never encoded again. The summary
view (``?view=summary``) puts a few figures per metric (:func:`summary_entries`) in place of
the per-step quantile arrays; its members are encoded in the same pass. Unfiltered documents
are gzip-compressed once, on the first request that accepts gzip.

Everything here is plain bytes and arrays, so a result crosses from the forecast worker
process as it is (:func:`reads_to_frames`, :func:`reads_from_frames`).
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import orjson

from workbench import contract as c
from workbench.forecast import QUANTILE_NAMES, SOURCE_MISSING, SOURCE_WARMING_UP, Forecast

VIEWS = ("full", "summary")
SUMMARY_STEPS = (6, 24, 96)  # 30 min, 2 h and 8 h ahead
SUMMARY_DIGITS = 4  # significant digits of the summary's figures
GZIP_LEVEL = 1  # 1,000 servers: ~8x smaller in ~0.1 s; level 6 saves ~20 % more for ~3x the time
GZIP_MIN_BYTES = 1024  # below this gzip's header costs more than it saves


def gzip_bytes(data: bytes | memoryview) -> bytes:
    """Return ``data`` gzip-compressed (no timestamp, so the same data gives the same bytes)."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


@dataclass(frozen=True)
class ReadQuery:
    """What a reader of ``/predictions/current`` asked for.

    Attributes:
        view: ``full`` (per-step quantile arrays) or ``summary`` (a few figures per metric).
        servers: Only these servers (empty: every one); names the daemon does not hold are
            listed as ``unknown_servers``, not refused.
        profiles: Only servers of these profiles (empty: every one). With ``servers``, a server
            must be named and of one of the profiles.
    """

    view: str = "full"
    servers: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; views: {', '.join(VIEWS)}")
        unknown = sorted(set(self.profiles) - set(c.PROFILES))
        if unknown:
            raise ValueError(f"unknown profile {', '.join(unknown)}; profiles: {', '.join(c.PROFILES)}")

    @property
    def filtered(self) -> bool:
        """Whether only some servers are asked for."""
        return bool(self.servers or self.profiles)


@dataclass(frozen=True, eq=False)
class ServerReads:
    """A published document and where each server's parts lie in it.

    Attributes:
        body: The full ``/predictions/current`` document.
        servers: Its servers, in document order (forecast, warming up, missing metrics).
        profiles: Each server's profile.
        spans: ``(servers, 4)`` start and end in ``body`` of each server's ``predictions``
            member and of its ``server_risk`` member (an empty span: it has none).
        marks: Start and end in ``body`` of the ``predictions`` members, of the ``alerts`` list
            and of the ``server_risk`` members.
        compact: The summary view's ``servers`` members, comma-separated.
        compact_spans: ``(servers, 2)`` start and end of each server's member in ``compact``.
        lead_minutes: How far ahead the summary view's quantile lists look, in minutes.
    """

    body: bytes
    servers: tuple[str, ...]
    profiles: tuple[str, ...]
    spans: np.ndarray
    marks: tuple[int, ...]
    compact: bytes
    compact_spans: np.ndarray
    lead_minutes: tuple[int, ...] = ()

    @cached_property
    def index(self) -> dict[str, int]:
        """Each server's row."""
        return {server: i for i, server in enumerate(self.servers)}

    @cached_property
    def full_gzip(self) -> bytes:
        """:attr:`body`, gzip-compressed (on first use)."""
        return gzip_bytes(self.body)

    @cached_property
    def summary_body(self) -> bytes:
        """The summary view of every server (on first use)."""
        return self.render(ReadQuery("summary"))

    @cached_property
    def summary_gzip(self) -> bytes:
        """:attr:`summary_body`, gzip-compressed (on first use)."""
        return gzip_bytes(self.summary_body)

    def answer(self, query: ReadQuery, accept_gzip: bool) -> tuple[bytes, bool]:
        """Return the document ``query`` asks for and whether it is gzip-compressed.

        Unfiltered documents are encoded and compressed once and kept; filtered ones are
        spliced (and compressed when large enough) on each call.
        """
        if not query.filtered:
            if query.view == "full":
                return (self.full_gzip, True) if accept_gzip else (self.body, False)
            return (self.summary_gzip, True) if accept_gzip else (self.summary_body, False)
        doc = self.render(query)
        if accept_gzip and len(doc) >= GZIP_MIN_BYTES:
            return gzip_bytes(doc), True
        return doc, False

    def rows(self, query: ReadQuery) -> list[int]:
        """Return the rows of the servers ``query`` keeps, in document order."""
        rows: Sequence[int] = range(len(self.servers))
        if query.servers:
            rows = sorted({self.index[s] for s in query.servers if s in self.index})
        if query.profiles:
            rows = [i for i in rows if self.profiles[i] in query.profiles]
        return list(rows)

    def render(self, query: ReadQuery) -> bytes:
        """Encode the document ``query`` asks for from the published bytes.

        The result is :attr:`body` with the ``predictions`` members (or, in the summary view,
        the ``servers`` members), the alerts and the ``server_risk`` members of the chosen
        servers, and a ``filter`` key that says what was asked and which names are unknown.
        """
        body = memoryview(self.body)
        p0, p1, a0, a1, r0, r1 = self.marks
        summary = query.view == "summary"
        extra = [b',"view":"summary","lead_minutes":' + orjson.dumps(self.lead_minutes)] if summary else []
        members: bytes | memoryview = self.compact if summary else body[p0:p1]
        alerts: bytes | memoryview = body[a0:a1]
        risks: bytes | memoryview = body[r0:r1]
        if query.filtered:
            rows = self.rows(query)
            chosen = {self.servers[i] for i in rows}
            spans = self.compact_spans[rows] if summary else self.spans[rows, :2]
            members = _join(memoryview(self.compact) if summary else body, spans)
            alerts = orjson.dumps([a for a in orjson.loads(alerts) if a.get("server") in chosen])
            risks = _join(body, self.spans[rows, 2:])
            extra.append(b',"filter":' + orjson.dumps(self._filter(query, len(rows))))
        head = b'{"servers":{' if summary else body[:p0]
        return b"".join([head, members, body[p1:a0], alerts, body[a1:r0], risks, body[r1:-1], *extra, b"}"])

    def _filter(self, query: ReadQuery, matched: int) -> dict[str, Any]:
        unknown = [s for s in dict.fromkeys(query.servers) if s not in self.index]
        return {
            "servers": list(query.servers),
            "profiles": list(query.profiles),
            "matched": matched,
            "unknown_servers": unknown,
        }


def encode_document(
    forecast: Forecast | None,
    entries: Sequence[bytes],
    risk_json: Mapping[str, Any],
    summary: Mapping[str, Any],
    profiles: Mapping[str, str] | None = None,
) -> ServerReads:
    """Encode ``/predictions/current`` once, noting where each server's members lie.

    Args:
        forecast: The forecast (``None``: no data yet).
        entries: Each server's ``"name":{...}`` member of ``predictions``, in the order of
            :meth:`Forecast.to_json` (forecast, warming up, missing metrics).
        risk_json: ``server_risk`` (:meth:`RiskReport.server_json`).
        summary: ``metadata``, ``environment`` and ``alerts``.
        profiles: Profiles of servers without a forecast (default: inferred from the name).
    """
    names = _names(forecast)
    profile_of = _profiles(forecast, names, profiles or {})
    doc = _Writer()
    doc.add(b'{"predictions":{')
    entry_spans, p0, p1 = doc.members(entries)
    doc.add(b'},"alerts":')
    a0, a1 = doc.add(orjson.dumps(summary["alerts"]))
    doc.add(b',"environment":' + orjson.dumps(summary["environment"]) + b',"server_risk":{')
    risk_names = list(risk_json)
    risk_spans, r0, r1 = doc.members([orjson.dumps(s) + b":" + orjson.dumps(risk_json[s]) for s in risk_names])
    doc.add(b'},"metadata":' + orjson.dumps(summary["metadata"]) + b"}")
    compact = _Writer()
    compact_spans, _, _ = compact.members(summary_entries(forecast, profile_of) if forecast is not None else [])
    return ServerReads(
        body=doc.bytes(),
        servers=tuple(names),
        profiles=tuple(profile_of),
        spans=_server_spans(names, entry_spans, dict(zip(risk_names, risk_spans, strict=True))),
        marks=(p0, p1, a0, a1, r0, r1),
        compact=compact.bytes(),
        compact_spans=compact_spans,
        lead_minutes=tuple(summary_lead_minutes(forecast.horizon if forecast is not None else max(SUMMARY_STEPS))),
    )


def summary_entries(forecast: Forecast, profiles: Sequence[str]) -> list[bytes]:
    """Return each server's ``"name":{...}`` member of the summary view, in document order.

    A forecast server gets its profile, source and, per metric, the current value, the middle
    and upper quantiles at :data:`SUMMARY_STEPS` (lists in the order of the document's
    ``lead_minutes``: 30 min, 2 h, 8 h), the highest upper quantile over the horizon and how
    many minutes ahead it lies. Servers without a forecast get what :meth:`Forecast.to_json`
    says of them. Quantiles are rounded as in the full document, then to
    :data:`SUMMARY_DIGITS` significant digits (a fleet table shows fewer).
    """
    docs = [*_forecast_summaries(forecast), *_waiting_summaries(forecast)]
    return [
        orjson.dumps(server) + b":" + orjson.dumps({"profile": profile, **doc})
        for server, profile, doc in zip(_names(forecast), profiles, docs, strict=True)
    ]


def _forecast_summaries(forecast: Forecast) -> list[dict[str, Any]]:
    mid, high = len(QUANTILE_NAMES) // 2, len(QUANTILE_NAMES) - 1
    steps = [s - 1 for s in SUMMARY_STEPS if s <= forecast.horizon]
    quantiles = np.round(forecast.quantiles, 4)  # as the full document rounds them
    at = quantiles[:, :, steps, :]
    worst = quantiles[:, :, :, high]
    figures = {
        "current": significant(forecast.current).tolist(),
        QUANTILE_NAMES[mid]: significant(at[..., mid]).tolist(),
        QUANTILE_NAMES[high]: significant(at[..., high]).tolist(),
        f"{QUANTILE_NAMES[high]}_max": significant(worst.max(axis=2)).tolist(),
        f"{QUANTILE_NAMES[high]}_max_minutes": ((worst.argmax(axis=2) + 1) * c.STEP_SECONDS // 60).tolist(),
    }
    return [
        {
            "source": forecast.source,
            "metrics": {m: {key: v[i][j] for key, v in figures.items()} for j, m in enumerate(forecast.targets)},
        }
        for i in range(len(forecast.servers))
    ]


def _waiting_summaries(forecast: Forecast) -> list[dict[str, Any]]:
    warming = [
        {"source": SOURCE_WARMING_UP, "history_steps": steps, "needed_steps": forecast.min_history}
        for steps in forecast.warming_up.values()
    ]
    return warming + [{"source": SOURCE_MISSING, "missing": missing} for missing in forecast.missing.values()]


def significant(values: np.ndarray, digits: int = SUMMARY_DIGITS) -> np.ndarray:
    """Return ``values`` rounded to ``digits`` significant digits (whole numbers stay whole; at most 8 decimals)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values) & (values != 0)
    magnitude = np.floor(np.log10(np.abs(values, where=finite, out=np.ones_like(values))))
    decimals = np.clip(digits - 1 - magnitude, 0, 8).astype(np.int64)
    out = values.copy()
    for d in np.unique(decimals[finite]):
        chosen = finite & (decimals == d)
        out[chosen] = np.round(values[chosen], int(d))
    return out


def summary_lead_minutes(horizon: int) -> list[int]:
    """Return the lead times (minutes) of the summary view's quantile lists for a horizon of ``horizon`` steps."""
    return [s * c.STEP_SECONDS // 60 for s in SUMMARY_STEPS if s <= horizon]


def held_profiles(state: Mapping[str, np.ndarray], servers: Sequence[str]) -> dict[str, str]:
    """Return the profile of each of ``servers`` held in a window state (:meth:`WindowStore.state`)."""
    if not servers:
        return {}
    names = np.asarray(state["names"])
    rows = np.flatnonzero(np.isin(names, np.asarray(list(servers), dtype=names.dtype)))
    return {str(names[r]): c.PROFILES[int(state["profile"][r])] for r in rows}


def reads_to_frames(reads: ServerReads | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a JSON header part and blobs that carry ``reads`` across a pipe (its body travels apart)."""
    if reads is None:
        return {}, {}
    header = {
        "servers": list(reads.servers),
        "profiles": list(reads.profiles),
        "marks": list(reads.marks),
        "lead_minutes": list(reads.lead_minutes),
    }
    blobs = {"reads_spans": reads.spans, "reads_compact": reads.compact, "reads_compact_spans": reads.compact_spans}
    return header, blobs


def reads_from_frames(header: Mapping[str, Any], blobs: Mapping[str, Any], body: bytes) -> ServerReads | None:
    """Rebuild what :func:`reads_to_frames` sent (``None`` when it sent nothing)."""
    if not header:
        return None
    return ServerReads(
        body=body,
        servers=tuple(header["servers"]),
        profiles=tuple(header["profiles"]),
        spans=blobs["reads_spans"],
        marks=tuple(int(m) for m in header["marks"]),
        compact=blobs["reads_compact"],
        compact_spans=blobs["reads_compact_spans"],
        lead_minutes=tuple(header["lead_minutes"]),
    )


class _Writer:
    """Concatenates bytes and says where each piece landed."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> tuple[int, int]:
        """Append ``data``; return its start and end."""
        start = self.size
        self.parts.append(data)
        self.size += len(data)
        return start, self.size

    def members(self, members: Sequence[bytes]) -> tuple[np.ndarray, int, int]:
        """Append ``members`` comma-separated; return their ``(len(members), 2)`` starts and ends, and the run's."""
        lengths = np.fromiter(map(len, members), dtype=np.int64, count=len(members))
        ends = self.size + np.cumsum(lengths + 1) - 1  # a comma after each member but the last
        start, end = self.add(b",".join(members))
        return np.stack([ends - lengths, ends], axis=1), start, end

    def bytes(self) -> bytes:
        """Return everything appended, as one ``bytes``."""
        return b"".join(self.parts)


def _server_spans(names: list[str], entries: np.ndarray, risks: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(servers, 4)``: each server's ``predictions`` span, then its ``server_risk`` span (``0, 0``: none)."""
    spans = np.zeros((len(names), 4), dtype=np.int64)
    spans[:, :2] = entries
    for i, server in enumerate(names):
        if server in risks:
            spans[i, 2:] = risks[server]
    return spans


def _join(data: memoryview, spans: np.ndarray) -> bytes:
    """Return the members of ``data`` at ``spans`` (empty spans skipped), comma-separated."""
    return b",".join(data[int(s) : int(e)] for s, e in spans.tolist() if e > s)


def _names(forecast: Forecast | None) -> list[str]:
    if forecast is None:
        return []
    return [*forecast.servers, *forecast.warming_up, *forecast.missing]


def _profiles(forecast: Forecast | None, names: list[str], known: Mapping[str, str]) -> list[str]:
    """Each server's profile: the forecast's, else ``known``, else the one its name implies."""
    forecast_profiles = list(forecast.profiles) if forecast is not None else []
    rest = names[len(forecast_profiles) :]
    return forecast_profiles + [known.get(s) or c.infer_profile(s) for s in rest]
