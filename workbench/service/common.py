"""Pieces both daemons share: the API-key guard, bounded body reading, the WebSocket hub."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from workbench.errors import Issue

API_KEY_HEADER = "X-API-Key"


def api_key_guard(
    expected: str | None, on_refuse: Callable[[int], None] | None = None
) -> Callable[..., Awaitable[None]]:
    """Return a FastAPI dependency that lets a write through only with the right ``X-API-Key``.

    The key is compared in constant time (:func:`hmac.compare_digest`); without a configured
    key every request passes. The header is declared as an OpenAPI security scheme.

    Args:
        expected: The configured key (``None``: writes are open).
        on_refuse: Called with 401 for each refused request (for counters).
    """
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when the daemon has a key")

    async def guard(key: str | None = Security(header)) -> None:
        if expected is None:
            return
        if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
            if on_refuse is not None:
                on_refuse(401)
            raise HTTPException(401, f"missing or invalid {API_KEY_HEADER}", headers={"WWW-Authenticate": "ApiKey"})

    return guard


def key_matches(expected: str | None, key: str | None) -> bool:
    """Whether ``key`` is the configured key (always true when the daemon has none)."""
    if expected is None:
        return True
    return key is not None and hmac.compare_digest(key.encode(), expected.encode())


class BodyError(ValueError):
    """A request body that cannot be read (a feed, a scenario): its HTTP status and issues say why."""

    def __init__(self, status: int, message: str, issues: Sequence[Issue] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.issues = list(issues)


class BodyTooLarge(Exception):
    """The request body exceeds the configured limit."""


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing (without reading it all) one larger than ``limit`` bytes.

    Raises:
        BodyTooLarge: when ``Content-Length`` or the bytes received exceed ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {int(declared):,} bytes; the limit is {limit:,}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Hub:
    """Fan-out of published results to WebSocket clients; a slow client only ever misses old ones.

    Each subscriber has a one-slot queue: publishing replaces an item the client has not taken
    yet, so memory stays bounded and a slow client gets the newest result next. ``None`` is the
    end-of-stream marker sent by :meth:`close`.
    """

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Any]] = set()

    def subscribe(self) -> asyncio.Queue[Any]:
        """Return a new subscriber queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        """Forget a subscriber."""
        self._queues.discard(queue)

    @property
    def subscribers(self) -> int:
        """Connected subscribers."""
        return len(self._queues)

    def publish(self, item: Any) -> None:
        """Hand ``item`` to every subscriber (call on the event loop)."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(item)

    def close(self) -> None:
        """Tell every subscriber the stream has ended."""
        self.publish(None)
