"""Pushes the daemon's predictive alerts to Alertmanager (``workbench serve --alertmanager URL``).

After each forecast the daemon hands its active alerts to :meth:`AlertmanagerPusher.submit`,
which returns at once; a background thread turns them into Alertmanager API v2 alerts and POSTs
them to every ``URL/api/v2/alerts``. As Alertmanager expects of its clients (Prometheus does the
same), a firing alert is re-sent after every forecast with ``endsAt`` a few forecast periods
ahead, so that it resolves by itself when the daemon stops; an alert that clears is sent once
more with ``endsAt`` = now. A failing Alertmanager is retried with back-off, logged and counted
(:attr:`AlertmanagerPusher.posts`); it never raises into the daemon nor blocks a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from workbench.alerts import Alert

ALERTNAME = "WorkbenchPredictiveAlert"
API_PATH = "/api/v2/alerts"
RESEND_PERIODS = 4  # endsAt of a firing alert: this many forecast periods ahead
TIMEOUT_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 60.0
OUTCOMES = ("success", "failure")
log = logging.getLogger(__name__)

AlertLike = Alert | Mapping[str, Any]  # an Alert or its REST object (Alert.to_dict)
LabelKey = tuple[tuple[str, str], ...]


def alerts_endpoint(url: str) -> str:
    """Return the API v2 alerts endpoint of an Alertmanager base URL (kept when already given)."""
    url = url.rstrip("/")
    return url if url.endswith(API_PATH) else url + API_PATH


def alert_labels(alert: AlertLike) -> dict[str, str]:
    """Return the Alertmanager labels of a predictive alert (its identity there)."""
    a = _as_dict(alert)
    return {
        "alertname": ALERTNAME,
        "instance": a["server"],
        "profile": a["profile"],
        "metric": a["metric"],
        "severity": a["severity"],
        "rule": a["rule"],
    }


def alert_annotations(alert: AlertLike) -> dict[str, str]:
    """Return the annotations: the alert in words, its lead in seconds and its probability when it has one."""
    a = _as_dict(alert)
    notes = {"summary": a["summary"], "lead_seconds": str(int(a["minutes_ahead"]) * 60)}
    if a.get("probability") is not None:
        notes["probability"] = str(a["probability"])
    return notes


def _as_dict(alert: AlertLike) -> Mapping[str, Any]:
    return alert.to_dict() if isinstance(alert, Alert) else alert


def _key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


def _refused(exc: Exception) -> bool:
    """Whether Alertmanager refused the alerts themselves (a 4xx other than 429): sending them again cannot help."""
    if not isinstance(exc, httpx.HTTPStatusError):
        return False
    code = exc.response.status_code
    return 400 <= code < 500 and code != 429


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertmanagerPusher:
    """Sends each forecast's active and cleared alerts to one or more Alertmanagers.

    Args:
        urls: Alertmanager base URLs (``http://127.0.0.1:9093``).
        period_seconds: Seconds between forecasts; a firing alert ends
            :data:`RESEND_PERIODS` periods after its last send unless sent again.
        generator_url: Link back to the daemon (``generatorURL``).
        timeout: Seconds to wait for one POST.
        max_backoff: Longest pause after failures before an Alertmanager is tried again.
        client: HTTP client (default: one of its own, with ``timeout``).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        period_seconds: float,
        generator_url: str,
        timeout: float = TIMEOUT_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        client: httpx.Client | None = None,
    ) -> None:
        self.endpoints = [alerts_endpoint(u) for u in urls]
        self.period_seconds = period_seconds
        self.generator_url = generator_url
        self.max_backoff = max_backoff
        self.posts = dict.fromkeys(OUTCOMES, 0)
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=timeout)
        self._firing: dict[LabelKey, dict[str, Any]] = {}  # last payload of each firing label set
        self._pending: dict[str, dict[LabelKey, dict[str, Any]]] = {e: {} for e in self.endpoints}
        self._failures = dict.fromkeys(self.endpoints, 0)
        self._retry_at = dict.fromkeys(self.endpoints, 0.0)
        self._queued: tuple[list[AlertLike], list[AlertLike]] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ payloads

    def payloads(
        self, active: Iterable[AlertLike], cleared: Iterable[AlertLike] = (), now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Return the Alertmanager alerts of one forecast and remember which label sets fire.

        Args:
            active: The forecast's active alerts: sent firing, ``endsAt`` a few periods ahead.
            cleared: Alerts that ended; label sets that fired before and are not in ``active``
                count as cleared too (an escalation resolves the warning's label set). Each is
                sent resolved, ``endsAt`` = ``now``.
            now: The time of the forecast (default: the clock).
        """
        now = now or datetime.now(UTC)
        ends = now + timedelta(seconds=RESEND_PERIODS * self.period_seconds)
        firing: dict[LabelKey, dict[str, Any]] = {}
        for alert in active:
            labels = alert_labels(alert)
            key = _key(labels)
            start = self._firing[key]["startsAt"] if key in self._firing else _time(now)
            firing[key] = self._payload(labels, alert_annotations(alert), start, _time(ends))
        resolved = {key: {**sent, "endsAt": _time(now)} for key, sent in self._firing.items() if key not in firing}
        for alert in cleared:
            labels = alert_labels(alert)
            if _key(labels) not in firing and _key(labels) not in resolved:
                resolved[_key(labels)] = self._payload(labels, alert_annotations(alert), _time(now), _time(now))
        self._firing = firing
        return [*firing.values(), *resolved.values()]

    def _payload(self, labels: dict[str, str], notes: dict[str, str], starts: str, ends: str) -> dict[str, Any]:
        return {
            "labels": labels,
            "annotations": notes,
            "startsAt": starts,
            "endsAt": ends,
            "generatorURL": self.generator_url,
        }

    # ------------------------------------------------------------------ sending

    def push(
        self, active: Iterable[AlertLike], cleared: Iterable[AlertLike] = (), now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Queue one forecast's :meth:`payloads` for every Alertmanager (a newer one of a label set wins)."""
        alerts = self.payloads(active, cleared, now)
        with self._lock:
            for pending in self._pending.values():
                pending.update((_key(a["labels"]), a) for a in alerts)
        return alerts

    def flush(self) -> None:
        """POST what is queued to every Alertmanager out of back-off (blocking; never raises)."""
        for endpoint in self.endpoints:
            if time.monotonic() >= self._retry_at[endpoint]:
                self._send(endpoint)

    def _send(self, endpoint: str) -> None:
        with self._lock:
            batch = dict(self._pending[endpoint])
        if not batch:
            return
        try:
            self._client.post(endpoint, json=list(batch.values())).raise_for_status()
        except Exception as exc:  # whatever fails there is the Alertmanager's problem, not the daemon's
            self._failed(endpoint, exc)
            if not _refused(exc):
                return  # kept for the next try
        else:
            self.posts["success"] += 1
            self._failures[endpoint] = 0
        with self._lock:
            pending = self._pending[endpoint]
            for key, alert in batch.items():
                if pending.get(key) is alert:
                    del pending[key]

    def _failed(self, endpoint: str, exc: Exception) -> None:
        self.posts["failure"] += 1
        self._failures[endpoint] += 1
        delay = min(self.max_backoff, 2.0 ** (self._failures[endpoint] - 1))
        self._retry_at[endpoint] = time.monotonic() + delay
        log.warning("Alertmanager %s: %s: %s; next try in %.0f s", endpoint, type(exc).__name__, exc, delay)

    # ------------------------------------------------------------------ background thread

    def submit(self, active: Iterable[AlertLike], cleared: Iterable[AlertLike] = ()) -> None:
        """Hand one forecast's alerts to the background thread and return at once.

        A forecast not yet taken is replaced by the newer one (its cleared alerts are kept).
        """
        with self._lock:
            earlier = self._queued[1] if self._queued is not None else []
            self._queued = (list(active), [*earlier, *cleared])
        self._wake.set()

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alertmanager", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background thread and close the HTTP client it owns."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._own_client:
            self._client.close()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._wait_seconds())
            self._wake.clear()
            if self._closed:
                return
            with self._lock:
                queued, self._queued = self._queued, None
            try:
                if queued is not None:
                    self.push(*queued)
                self.flush()
            except Exception:  # the thread must outlive any bad alert
                log.exception("pushing alerts to Alertmanager failed")

    def _wait_seconds(self) -> float | None:
        """Seconds until the next retry of a queued send (``None``: nothing queued, wait for a forecast)."""
        with self._lock:
            due = [self._retry_at[e] for e, pending in self._pending.items() if pending]
        return max(0.0, min(due) - time.monotonic()) if due else None
