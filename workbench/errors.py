"""Typed exceptions of the workbench, each carrying the context a user needs to act."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on purpose."""


@dataclass(frozen=True)
class Issue:
    """One problem found in input data.

    Attributes:
        index: Position of the offending record or row (``None`` when it is not about one).
        field: Name of the offending field, as the caller spelled it.
        value: The offending value (shortened when long).
        reason: What is wrong and what is allowed.
    """

    index: int | None
    field: str
    value: Any
    reason: str

    def __str__(self) -> str:
        where = f"record {self.index}" if self.index is not None else "input"
        return f"{where}, field {self.field!r}, value {_short(self.value)}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """Return the issue as JSON-friendly data (the REST ``rejected`` entries)."""
        return {"index": self.index, "field": self.field, "error": self.reason}


class ContractError(WorkbenchError, ValueError):
    """Input does not satisfy the data contract; ``issues`` says where and why."""

    def __init__(self, issues: Sequence[Issue], *, limit: int = 10) -> None:
        self.issues = list(issues)
        shown = "\n  ".join(str(i) for i in self.issues[:limit])
        more = len(self.issues) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.issues)} contract violation(s):\n  {shown}{tail}")


class ConfigError(WorkbenchError, ValueError):
    """A setting has a value outside what is allowed."""


class BundleError(WorkbenchError):
    """A model bundle is missing, damaged, or does not match the running contract."""


class StateError(WorkbenchError):
    """The daemon's state folder is unusable: another contract or bundle, damage, or in use."""


class ServiceError(WorkbenchError):
    """A supervised service failed to start or died; the message names it and ends with its log's tail."""


class DaemonError(WorkbenchError):
    """A daemon answered a request with an error status; the message names the URL and its answer.

    Attributes:
        url: The URL requested.
        status: The HTTP status (``None`` when no answer came).
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class DaemonUnreachable(DaemonError):
    """A daemon did not answer at all (connection refused, timeout); the message names the URL."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
