"""gzip for the inference daemon's HTTP answers, only to clients that accept it.

``/predictions/current`` compresses its documents itself, once per forecast
(:class:`~workbench.service.reads.ServerReads`); every other JSON answer over
:data:`~workbench.service.reads.GZIP_MIN_BYTES` goes through :class:`GZipWhenAccepted`, which
leaves answers that already carry a ``Content-Encoding`` and WebSockets alone.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware, IdentityResponder
from starlette.types import ASGIApp, Receive, Scope, Send

from workbench.service.reads import GZIP_LEVEL, GZIP_MIN_BYTES


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (``gzip;q=0`` and ``*;q=0`` refuse it)."""
    weights: dict[str, float] = {}
    for item in (accept_encoding or "").lower().split(","):
        name, _, params = item.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if name.strip():
            weights[name.strip()] = weight
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


class GZipWhenAccepted(GZipMiddleware):
    """Starlette's gzip middleware, deciding by :func:`accepts_gzip` rather than a substring test.

    Args:
        app: The app to wrap.
        minimum_size: Smallest answer compressed (bytes).
        compresslevel: zlib level.
    """

    def __init__(self, app: ASGIApp, minimum_size: int = GZIP_MIN_BYTES, compresslevel: int = GZIP_LEVEL) -> None:
        super().__init__(app, minimum_size=minimum_size, compresslevel=compresslevel)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Compress an HTTP answer when the request accepts gzip; pass anything else through."""
        if scope["type"] == "http" and not accepts_gzip(Headers(scope=scope).get("accept-encoding")):
            responder = IdentityResponder(self.app, self.minimum_size, exclude_content_types=self.exclude_content_types)
            await responder(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
