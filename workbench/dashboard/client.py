"""A small HTTP client for the two daemons, as the dashboard needs them.

httpx asks for gzip and decodes it, which the daemon sends for its large documents. Every call
either returns the daemon's JSON document or raises: :class:`DaemonUnreachable`
when nothing answered (refused, timed out), :class:`DaemonError` when the answer was an error.
The widgets never see an ``httpx`` exception.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from workbench.dashboard import defaults as d
from workbench.errors import DaemonError, DaemonUnreachable
from workbench.service.common import API_KEY_HEADER


class DaemonApi(Protocol):
    """What the dashboard asks of the daemons (implemented by :class:`DaemonClient` and test fakes)."""

    daemon_url: str
    generator_url: str

    def predictions(self, servers: Sequence[str] | None = None) -> dict[str, Any]:
        """Return ``GET /predictions/current`` (with ``servers``: only theirs, ``?server=``)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Return ``GET /predictions/current?view=summary``."""
        ...

    def status(self) -> dict[str, Any]:
        """Return ``GET /status``."""
        ...

    def history(self, server: str, steps: int) -> dict[str, Any]:
        """Return ``GET /history/{server}?steps=``."""
        ...

    def archived(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return ``GET /history?kind=&server=&start=&end=&limit=`` (the daemon's history archive)."""
        ...

    def set_scenario(self, name: str) -> dict[str, Any]:
        """Return the answer of the generator's ``POST /scenario/set``."""
        ...

    def scenario_status(self) -> dict[str, Any]:
        """Return the generator's ``GET /scenario/status``."""
        ...


class DaemonClient:
    """Talks to the inference daemon and the generator daemon over HTTP.

    Args:
        daemon_url: Inference daemon base URL (default: ``$WORKBENCH_DAEMON_URL``, else
            ``http://127.0.0.1:8000``).
        generator_url: Generator daemon base URL (default: ``$WORKBENCH_GENERATOR_URL``, else
            ``http://127.0.0.1:8001``).
        api_key: ``X-API-Key`` sent with writes (default: ``$WORKBENCH_API_KEY``, else none).
        timeout: Seconds to wait for each answer.
        daemon_http: An ``httpx.Client`` for the inference daemon (tests pass an in-process one).
        generator_http: An ``httpx.Client`` for the generator daemon.
    """

    def __init__(
        self,
        daemon_url: str | None = None,
        generator_url: str | None = None,
        api_key: str | None = None,
        timeout: float = d.TIMEOUT_SECONDS,
        *,
        daemon_http: httpx.Client | None = None,
        generator_http: httpx.Client | None = None,
    ) -> None:
        self.daemon_url = (daemon_url or os.environ.get(d.DAEMON_URL_ENV) or d.DAEMON_URL).rstrip("/")
        self.generator_url = (generator_url or os.environ.get(d.GENERATOR_URL_ENV) or d.GENERATOR_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(d.API_KEY_ENV) or None
        self.timeout = timeout
        self._daemon = daemon_http or httpx.Client(timeout=timeout)
        self._generator = generator_http or httpx.Client(timeout=timeout)

    def predictions(self, servers: Sequence[str] | None = None) -> dict[str, Any]:
        """Return the latest ``GET /predictions/current`` document (with ``servers``: only theirs).

        Every step of every quantile: about 18 KB per server, gzip-compressed on the wire.
        """
        params = None if servers is None else {"server": list(servers)}
        return self._get(self._daemon, f"{self.daemon_url}/predictions/current", params=params)

    def summary(self) -> dict[str, Any]:
        """Return the latest prediction's summary (``?view=summary``): a fleet table's figures, ~1 KB per server."""
        return self._get(self._daemon, f"{self.daemon_url}/predictions/current", params={"view": "summary"})

    def status(self) -> dict[str, Any]:
        """Return the daemon's ``GET /status`` document (warm-up progress, counters)."""
        return self._get(self._daemon, f"{self.daemon_url}/status")

    def history(self, server: str, steps: int) -> dict[str, Any]:
        """Return the last ``steps`` steps the daemon holds for ``server`` (``GET /history/{server}``)."""
        name = quote(server, safe="")
        name = name.replace(".", "%2E") if set(name) == {"."} else name  # "." and ".." are valid names
        return self._get(self._daemon, f"{self.daemon_url}/history/{name}", params={"steps": steps})

    def archived(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return rows of the daemon's history archive (``GET /history``; 404 when it keeps none)."""
        return self._get(self._daemon, f"{self.daemon_url}/history", params=params)

    def set_scenario(self, name: str) -> dict[str, Any]:
        """Switch the generator's scenario (``POST /scenario/set``) and return its answer."""
        headers = {API_KEY_HEADER: self.api_key} if self.api_key else {}
        url = f"{self.generator_url}/scenario/set"
        return self._call(self._generator, "POST", url, json={"scenario": name}, headers=headers)

    def scenario_status(self) -> dict[str, Any]:
        """Return the generator's ``GET /scenario/status`` document."""
        return self._get(self._generator, f"{self.generator_url}/scenario/status")

    def close(self) -> None:
        """Close the HTTP connections."""
        self._daemon.close()
        self._generator.close()

    def _get(self, http: httpx.Client, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call(http, "GET", url, params=params)

    def _call(self, http: httpx.Client, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = http.request(method, url, timeout=self.timeout, **kwargs)
        except httpx.TransportError as exc:  # connection refused, DNS, timeouts, dropped connections
            raise DaemonUnreachable(f"cannot reach {url}: {type(exc).__name__}: {exc}", url=url) from exc
        if not response.is_success:
            raise DaemonError(
                f"{method} {url} answered {response.status_code}: {_detail(response)}",
                url=url,
                status=response.status_code,
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise DaemonError(f"{method} {url} answered with something other than JSON", url=url) from exc
        if not isinstance(data, dict):
            raise DaemonError(f"{method} {url} answered with JSON that is not an object", url=url)
        return data


def _detail(response: httpx.Response) -> str:
    """Return the daemon's ``detail`` message when it gave one, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return str(data)[:200]
