"""``GET /predictions/current``: the whole fleet, some servers, or a summary, gzip when accepted.

Every form is cut from the bytes published once per forecast
(:class:`~workbench.service.reads.ServerReads`); the unfiltered ones are also compressed once.
Work beyond handing over ready bytes runs in a worker thread, off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from workbench import contract as c
from workbench.service import schemas as s
from workbench.service.compression import accepts_gzip
from workbench.service.reads import VIEWS, ReadQuery

if TYPE_CHECKING:
    from workbench.service.daemon import InferenceDaemon

JSON = "application/json"
VIEW_HELP = "`full`: every forecast step; `summary`: a few figures per metric (a fleet table's worth)"
SERVER_HELP = "only this server (repeat for more); names the daemon does not hold are listed in `filter`"
PROFILE_HELP = f"only servers of this profile (repeat for more; with `server`, both apply): {', '.join(c.PROFILES)}"


def read_query(
    view: Annotated[str, Query(description=VIEW_HELP, json_schema_extra={"enum": list(VIEWS)})] = "full",
    server: Annotated[list[str] | None, Query(description=SERVER_HELP)] = None,
    profile: Annotated[
        list[str] | None,
        Query(description=PROFILE_HELP, json_schema_extra={"items": {"type": "string", "enum": list(c.PROFILES)}}),
    ] = None,
) -> ReadQuery:
    """Read the query parameters of ``/predictions/current``.

    Raises:
        HTTPException: 422 naming the allowed values, for an unknown view or profile.
    """
    try:
        return ReadQuery(view, tuple(server or ()), tuple(profile or ()))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def add_predictions_route(app: FastAPI, daemon: InferenceDaemon) -> None:
    """Add ``GET /predictions/current`` to ``app``, serving ``daemon``'s latest result."""

    @app.get(
        "/predictions/current",
        response_model=s.PredictionsResponse | s.PredictionsSummaryResponse,
        responses={422: {"model": s.ErrorResponse, "description": "unknown view or profile"}},
        tags=["read"],
    )
    async def predictions_current(request: Request, query: Annotated[ReadQuery, Depends(read_query)]) -> Response:
        """Return the latest forecast of every server, the active alerts and the fleet's risk.

        Served from the last published result, without waiting for the model. Before the first
        forecast, ``predictions`` is empty and ``metadata.status`` says why.

        ``?server=`` and ``?profile=`` keep only some servers in ``predictions``, ``server_risk``
        and ``alerts`` (``environment`` and ``metadata`` stay the fleet's) and add ``filter``.
        ``?view=summary`` replaces ``predictions`` with ``servers``: per server its profile,
        source and, per metric, the current value, p50 and p90 at 30 min, 2 h and 8 h
        (``lead_minutes``) and the highest p90 with its lead time, under a tenth of the full
        size. Answers are gzip-compressed for clients that send ``Accept-Encoding: gzip``.
        """
        latest = daemon.predictor.latest
        gzip = accepts_gzip(request.headers.get("accept-encoding"))
        if latest.reads is None:  # a result built without its server index: only the whole document
            if query != ReadQuery():
                raise HTTPException(503, "this result holds no per-server index; ask without view, server or profile")
            return Response(latest.body, media_type=JSON)
        if query == ReadQuery() and not gzip:
            return Response(latest.body, media_type=JSON)
        body, compressed = await anyio.to_thread.run_sync(latest.reads.answer, query, gzip)
        # a plain answer's Vary is added by the gzip middleware (it would add a second one)
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if compressed else {}
        return Response(body, media_type=JSON, headers=headers)
