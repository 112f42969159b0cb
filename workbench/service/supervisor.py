"""Run a few services as child processes: start each until it answers, watch them, stop them all.

Each child runs in its own session (process group), so a Ctrl-C in the terminal reaches only the
supervisor, which then stops every child once and in order: SIGINT to the child's group, a grace
period, then SIGTERM and finally SIGKILL. A child's stdout and stderr go to its own log file;
when a child fails to start or dies, the error names it and ends with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from workbench.errors import ConfigError, ServiceError

TAIL_LINES = 25


@dataclass(frozen=True)
class ChildSpec:
    """One service to run.

    Attributes:
        name: Short name, used for the log file (``NAME.log``) and in messages.
        argv: Command line.
        ready_url: URL polled until it answers with a status below 500 (``None``: ready at once).
        ready_method: HTTP method of the poll (``HEAD`` spares a page that is costly to render).
        env: Extra environment variables for the child.
    """

    name: str
    argv: Sequence[str]
    ready_url: str | None = None
    ready_method: str = "GET"
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"child name={self.name!r} must be letters, digits, '-' or '_'")
        if not self.argv:
            raise ConfigError(f"child {self.name!r}: argv must not be empty")
        if self.ready_method not in ("GET", "HEAD"):
            raise ConfigError(f"child {self.name!r}: ready_method={self.ready_method!r}; allowed: GET, HEAD")


@dataclass
class Child:
    """A started child: its spec, process and log file."""

    spec: ChildSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ServiceError:
        """Return a :class:`ServiceError` saying ``what`` happened, with the log's tail."""
        return ServiceError(f"{self.spec.name} {what}; log {self.log_path}, last lines:\n{self.tail()}")


class Supervisor:
    """Start, watch and stop a list of child services.

    Args:
        specs: The children, started in this order and stopped in the reverse order.
        log_dir: Folder for the children's logs (created).
        start_timeout: Seconds each child has to answer its ``ready_url``.
        grace: Seconds a child has to exit after SIGINT, and again after SIGTERM.
        poll: Seconds between checks.
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        log_dir: Path,
        *,
        start_timeout: float = 120.0,
        grace: float = 10.0,
        poll: float = 0.2,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"child names must be unique, got {names}")
        for name, value in (("start_timeout", start_timeout), ("grace", grace), ("poll", poll)):
            if not value > 0:
                raise ConfigError(f"{name}={value!r} must be a number > 0")
        self.specs = list(specs)
        self.log_dir = Path(log_dir)
        self.start_timeout, self.grace, self.poll = start_timeout, grace, poll
        self.children: list[Child] = []
        self.stopping = threading.Event()  # set by SIGINT/SIGTERM or request_stop()

    def request_stop(self) -> None:
        """Ask :meth:`start` and :meth:`watch` to return (safe from a signal handler)."""
        self.stopping.set()

    def start(self) -> None:
        """Start every child in order and wait until each answers its ``ready_url``.

        Returns early, with the children started so far, once a stop is requested.

        Raises:
            ServiceError: naming the child that exited or did not answer in time, with its log tail.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            if self.stopping.is_set():
                return
            child = self._spawn(spec)
            self.children.append(child)
            self._wait_ready(child)

    def watch(self, on_poll: Callable[[], None] | None = None) -> None:
        """Return when a stop is requested; call ``on_poll`` between checks.

        Raises:
            ServiceError: when a child exits on its own, naming it, with its exit code and log tail.
        """
        while not self.stopping.wait(self.poll):
            for child in self.children:
                code = child.process.poll()
                if code is not None:
                    raise child.failure(f"exited with code {code}")
            if on_poll is not None:
                on_poll()

    def stop(self) -> dict[str, int | None]:
        """Stop every child, last started first, and return their exit codes by name.

        Each gets SIGINT (to its whole process group), then SIGTERM after ``grace`` seconds, then
        SIGKILL after another ``grace`` seconds.
        """
        codes: dict[str, int | None] = {}
        for child in reversed(self.children):
            codes[child.spec.name] = _stop_one(child.process, self.grace)
        self.children.clear()
        return codes

    @contextlib.contextmanager
    def signals_stop(self) -> Iterator[None]:
        """Within the block, SIGINT and SIGTERM request a stop instead of raising (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _spawn(self, spec: ChildSpec) -> Child:
        log_path = self.log_dir / f"{spec.name}.log"
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(  # noqa: S603 (argv built by the caller, no shell)
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                start_new_session=True,
            )
        return Child(spec, process, log_path)

    def _wait_ready(self, child: Child) -> None:
        url = child.spec.ready_url
        deadline = time.monotonic() + self.start_timeout
        while url is not None and not self.stopping.is_set():
            code = child.process.poll()
            if code is not None:
                raise child.failure(f"exited with code {code} while starting")
            if _answers(child.spec.ready_method, url):
                return
            if time.monotonic() > deadline:
                raise child.failure(f"did not answer {url} within {self.start_timeout:g} s")
            self.stopping.wait(self.poll)


def _answers(method: str, url: str) -> bool:
    try:
        return httpx.request(method, url, timeout=2.0).status_code < 500
    except httpx.HTTPError:
        return False


def _stop_one(process: subprocess.Popen[bytes], grace: float) -> int | None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    _kill_group(process.pid)
    return process.poll()


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in the child's process group (grandchildren that ignored the stop)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def free_port(host: str, port: int) -> bool:
    """Return whether ``port`` on ``host`` can be bound now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
