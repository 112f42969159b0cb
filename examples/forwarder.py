"""Forward a JSON-lines file of metric records to the inference daemon, like ``tail -F``.

Each line of FILE is one record, e.g.::

    {"timestamp": "2025-10-13T16:00:00Z", "server_name": "ppdb001", "cpu_pct": 45.2, "mem_pct": 67.8}

Lines are sent in batches to ``POST /feed/data``. A batch is retried with exponential backoff
while the daemon is unreachable or answers 408/429/5xx, so nothing is lost while it restarts;
a 4xx answer means the daemon kept the valid records and refused the others, which are
reported and not retried. With ``--offset-file`` the byte offset after the last acknowledged
line is saved, so a restarted forwarder resumes where it stopped (at-least-once delivery). A
file that shrinks (rotated or truncated) is read again from its start.

    python examples/forwarder.py metrics.jsonl --url http://127.0.0.1:8000 --offset-file .offset
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RETRY_STATUSES = {408, 425, 429}
log = logging.getLogger("forwarder")


@dataclass
class Forwarder:
    """Reads new complete lines of ``path`` and posts them in batches.

    Attributes:
        path: The JSON-lines file.
        client: HTTP client whose base URL is the daemon.
        batch: Most records per POST.
        offset_file: Where the acknowledged byte offset is kept (``None``: start at the end).
        max_backoff: Longest pause between retries.
        sleep: Sleep function (injectable for tests).
    """

    path: Path
    client: httpx.Client
    batch: int = 500
    offset_file: Path | None = None
    max_backoff: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    offset: int = 0
    sent: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.offset_file is not None and self.offset_file.exists():
            self.offset = int(self.offset_file.read_text().strip() or 0)
        elif self.offset_file is None and self.path.exists():
            self.offset = self.path.stat().st_size  # like tail -F: only what is written from now on

    def poll(self) -> int:
        """Send every complete line written since the last call; return the records sent."""
        if not self.path.exists():
            return 0
        if self.path.stat().st_size < self.offset:
            log.warning("%s shrank (rotated or truncated): reading it from the start", self.path)
            self.offset = 0
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # an unfinished last line waits for its newline
        start = self.offset
        records: list[Any] = []
        consumed = 0
        for line in data[:end].splitlines(keepends=True):
            consumed += len(line)
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    log.warning("skipping a line that is not JSON (%s): %.80r", exc, line)
            if len(records) >= self.batch:
                self._post(records, start + consumed)
                records = []
        if records or consumed:
            self._post(records, start + consumed)
        return self.sent

    def _post(self, records: list[Any], offset: int) -> None:
        if records:
            self._deliver(records)
        self.offset = offset
        if self.offset_file is not None:
            tmp = self.offset_file.with_suffix(".tmp")
            tmp.write_text(str(offset))
            os.replace(tmp, self.offset_file)

    def _deliver(self, records: list[Any]) -> None:
        delay = 0.5
        while True:
            try:
                response = self.client.post("/feed/data", json={"records": records})
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    self.sent += len(records)
                    return
                if response.status_code < 500 and response.status_code not in RETRY_STATUSES:
                    self._report(response, len(records))
                    return
                problem = f"HTTP {response.status_code}"
            log.warning("batch not delivered (%s); retrying in %.1f s", problem, delay)
            self.sleep(delay)
            delay = min(2 * delay, self.max_backoff)

    def _report(self, response: httpx.Response, count: int) -> None:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:300]}
        self.sent += int(body.get("records_added", 0))
        rejected = body.get("rejected", [])
        self.refused.extend(rejected)
        log.error(
            "HTTP %d: %s of %d records kept; refused: %s",
            response.status_code,
            body.get("records_added", 0),
            count,
            "; ".join(f"#{r.get('index')} {r.get('field')}: {r.get('error')}" for r in rejected[:5])
            or body.get("detail"),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="JSON-lines file to follow")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="inference daemon base URL")
    parser.add_argument("--batch", type=int, default=500, help="most records per POST")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the file")
    parser.add_argument("--offset-file", type=Path, help="resume from (and save) the acknowledged offset")
    parser.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the X-API-Key")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per POST")
    parser.add_argument("--once", action="store_true", help="send what is there now, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    headers = {}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            parser.error(f"--api-key-env {args.api_key_env}: the variable is unset or empty")
        headers["X-API-Key"] = key
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
        forwarder = Forwarder(args.file, client, batch=args.batch, offset_file=args.offset_file)
        if args.once and args.offset_file is None:
            forwarder.offset = 0
        while True:
            before = forwarder.sent
            forwarder.poll()
            if forwarder.sent > before:
                log.info("sent %d records (total %d)", forwarder.sent - before, forwarder.sent)
            if args.once:
                return 0
            time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
