"""Held-out split of a contract frame: a test period at the end and a set of test servers.

Training sees only the other servers, and only before the test period; the evaluation
forecasts the test servers inside the test period, reading their earlier history as context.
The split is recorded in the bundle's ``training.json`` (key ``holdout``) so that an
evaluation can use exactly what training left out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench import contract as c
from workbench.errors import BundleError, ConfigError

HOLDOUT_KEY = "holdout"
_SERVER_RE = re.compile(c.SERVER_NAME_PATTERN)


@dataclass(frozen=True)
class Holdout:
    """What training leaves out: every row from ``test_start`` on, and every row of ``test_servers``.

    Attributes:
        test_start: First timestamp of the test period (UTC, on the contract's step grid).
        test_servers: Servers the model never trains on (sorted, unique, at least one).
    """

    test_start: datetime
    test_servers: tuple[str, ...]

    def __post_init__(self) -> None:
        start = self.test_start
        if not isinstance(start, datetime) or start.tzinfo is None:
            raise ConfigError(f"test_start: a timezone-aware UTC datetime is allowed, got {start!r}")
        start = start.astimezone(UTC)
        if int(start.timestamp()) % c.STEP_SECONDS or start.microsecond:
            raise ConfigError(f"test_start: must lie on the {c.STEP_SECONDS} s step grid, got {start.isoformat()}")
        object.__setattr__(self, "test_start", start)
        servers = tuple(self.test_servers) if not isinstance(self.test_servers, str) else (self.test_servers,)
        if not servers:
            raise ConfigError("test_servers: at least one server name is needed")
        bad = [s for s in servers if not isinstance(s, str) or not _SERVER_RE.fullmatch(s)]
        if bad:
            raise ConfigError(f"test_servers: names must match {c.SERVER_NAME_PATTERN}, got {bad[:5]}")
        if len(set(servers)) != len(servers):
            raise ConfigError(f"test_servers: each server at most once, got {list(servers)}")
        object.__setattr__(self, "test_servers", tuple(sorted(servers)))

    def to_json(self) -> dict[str, Any]:
        """Return the holdout as plain JSON data (what ``training.json`` stores)."""
        return {"test_start": self.test_start.isoformat(), "test_servers": list(self.test_servers)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Holdout:
        """Rebuild a holdout from :meth:`to_json`'s output.

        Raises:
            ConfigError: when keys are missing or unknown, or a value is malformed.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"holdout: expected a mapping with test_start and test_servers, got {data!r}")
        keys = {"test_start", "test_servers"}
        if set(data) != keys:
            raise ConfigError(f"holdout: keys allowed and needed: {sorted(keys)}, got {sorted(data)}")
        try:
            start = datetime.fromisoformat(str(data["test_start"]))
        except ValueError as exc:
            allowed = "an ISO 8601 timestamp is allowed"
            raise ConfigError(f"holdout.test_start: {allowed}, got {data['test_start']!r}") from exc
        servers = data["test_servers"]
        if not isinstance(servers, list | tuple):
            raise ConfigError(f"holdout.test_servers: a list of server names is allowed, got {servers!r}")
        return cls(test_start=start, test_servers=tuple(servers))


def make_holdout(frame: pl.DataFrame, *, test_days: float, test_servers: float | int, seed: int) -> Holdout:
    """Choose a held-out test period and a seeded, profile-stratified set of test servers.

    The test period is the last ``test_days`` of the data, starting on the step grid. Test
    servers are drawn per profile in proportion to the profile's share of the fleet, with at
    least one per profile whenever there are enough test servers, and taken first from profiles
    that keep a server for training.

    Args:
        frame: Contract frame (columns ``timestamp``, ``server_name``, ``profile``).
        test_days: Length of the test period in days, shorter than the data.
        test_servers: A fraction of the fleet in (0, 1) (rounded, at least one server) or a
            count of servers from 1 to the fleet size minus one (an int, or a whole float).
        seed: Seed of the server choice; the same seed and data give the same holdout.

    Raises:
        ConfigError: when a parameter is out of range for this frame.
    """
    if frame.height == 0:
        raise ConfigError("make_holdout: the frame has no rows")
    start = _test_start(frame, test_days)
    profiles = frame.group_by(c.SERVER).agg(pl.col(c.PROFILE).first()).sort(c.SERVER)
    count = _test_count(test_servers, profiles.height)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: an int >= 0 is allowed, got {seed!r}")
    groups: dict[str, list[str]] = {}
    for name, profile in profiles.iter_rows():
        groups.setdefault(profile, []).append(name)
    return Holdout(test_start=start, test_servers=_stratified(groups, count, np.random.default_rng(seed)))


def whole_fleet_holdout(frame: pl.DataFrame, *, test_days: float) -> Holdout:
    """Hold out every server over the last ``test_days``: for a fleet the model never trained on.

    Used to score early warning on a separately simulated fleet (e.g. the ``critical``
    scenario, where incidents are frequent enough to count), whose servers and times are all
    unseen by the model.

    Raises:
        ConfigError: when the frame is empty or ``test_days`` is out of range for it.
    """
    if frame.height == 0:
        raise ConfigError("whole_fleet_holdout: the frame has no rows")
    servers = tuple(sorted(frame[c.SERVER].unique().to_list()))
    return Holdout(test_start=_test_start(frame, test_days), test_servers=servers)


def split_frame(frame: pl.DataFrame, holdout: Holdout) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a contract frame into what training may see and what the evaluation uses.

    Args:
        frame: Contract frame holding every test server.
        holdout: The split, e.g. from :func:`make_holdout` or :func:`holdout_from_bundle`.

    Returns:
        ``(train, test)``: ``train`` holds the rows of the other servers before
        ``holdout.test_start``; ``test`` holds the test servers' full history (the backtest
        reads the context before each forecast origin).

    Raises:
        ConfigError: when a test server is absent from the frame or nothing is left to train on.
    """
    present = set(frame[c.SERVER].unique().to_list())
    missing = [s for s in holdout.test_servers if s not in present]
    if missing:
        raise ConfigError(
            f"holdout: {len(missing)} test server(s) are not in the data, e.g. {missing[:5]}; "
            "was the holdout made on another dataset?"
        )
    is_test = pl.col(c.SERVER).is_in(list(holdout.test_servers))
    train = frame.filter(~is_test & (pl.col(c.TIMESTAMP) < holdout.test_start))
    if train.height == 0:
        raise ConfigError(f"holdout: no training rows left before {holdout.test_start.isoformat()}")
    return train, frame.filter(is_test)


def holdout_from_bundle(bundle: Any) -> Holdout | None:
    """Return the holdout a bundle was trained with, or ``None`` when training recorded none.

    Args:
        bundle: A loaded :class:`workbench.model.Bundle` or the path of a bundle folder (only its
            ``training.json`` is read).

    Raises:
        BundleError: when the folder's ``training.json`` is unreadable or its holdout malformed.
    """
    if isinstance(bundle, str | Path):
        file = Path(bundle) / "training.json"
        try:
            training = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{file}: unreadable training record: {exc}") from exc
    else:
        training = getattr(bundle, "training", None)
    if not isinstance(training, Mapping) or training.get(HOLDOUT_KEY) is None:
        return None
    try:
        return Holdout.from_json(training[HOLDOUT_KEY])
    except ConfigError as exc:
        raise BundleError(f"training record: malformed {HOLDOUT_KEY}: {exc}") from exc


def parse_test_servers(text: str) -> float | int:
    """Read a test-server share as typed on a command line: ``"5"`` is a count, ``"0.2"`` a fraction.

    Raises:
        ConfigError: when the text is neither.
    """
    value = text.strip()
    try:
        return int(value) if value.lstrip("+-").isdigit() else float(value)
    except ValueError:
        raise ConfigError(f"test_servers: a fraction in (0, 1) or a count of servers, got {text!r}") from None


def _test_start(frame: pl.DataFrame, test_days: float) -> datetime:
    if isinstance(test_days, bool) or not isinstance(test_days, int | float) or not test_days > 0:
        raise ConfigError(f"test_days: a number of days > 0 is allowed, got {test_days!r}")
    first, last = frame[c.TIMESTAMP].min(), frame[c.TIMESTAMP].max()
    assert isinstance(first, datetime) and isinstance(last, datetime)
    step = c.STEP_SECONDS
    end = last.astimezone(UTC) + timedelta(seconds=step)
    seconds = math.ceil((end.timestamp() - test_days * 86400) / step) * step
    start = datetime.fromtimestamp(seconds, UTC)
    if start <= first.astimezone(UTC):
        span = (end - first.astimezone(UTC)).total_seconds() / 86400
        raise ConfigError(f"test_days: must be shorter than the data ({span:.2f} days), got {test_days}")
    return start


def _test_count(test_servers: float | int, fleet: int) -> int:
    allowed = f"a fraction in (0, 1) or a count from 1 to {fleet - 1} (the fleet has {fleet} servers)"
    if isinstance(test_servers, bool) or not isinstance(test_servers, int | float):
        raise ConfigError(f"test_servers: {allowed}; got {test_servers!r}")
    if isinstance(test_servers, float) and test_servers >= 1 and test_servers.is_integer():
        test_servers = int(test_servers)  # e.g. a notebook's float parameter given as 5
    if isinstance(test_servers, float):
        if not 0 < test_servers < 1:
            raise ConfigError(f"test_servers: {allowed}; got {test_servers!r}")
        count = max(1, round(test_servers * fleet))
    else:
        count = test_servers
    if not 1 <= count <= fleet - 1:
        raise ConfigError(f"test_servers: {allowed}; got {test_servers!r} ({count} servers)")
    return count


def _stratified(groups: dict[str, list[str]], count: int, rng: np.random.Generator) -> tuple[str, ...]:
    """Draw ``count`` servers: one per profile first (profiles that keep a training server first), then by share."""
    order = [sorted(groups)[i] for i in rng.permutation(len(groups))]
    pools = {p: [groups[p][i] for i in rng.permutation(len(groups[p]))] for p in order}
    fleet = sum(len(v) for v in pools.values())
    taken = dict.fromkeys(order, 0)
    for profile in sorted(order, key=lambda p: len(pools[p]) < 2)[:count]:
        taken[profile] = 1
    for _ in range(count - sum(taken.values())):
        # Keep one server of each profile for training while any other profile has room.
        room = [p for p in order if taken[p] < len(pools[p]) - 1] or [p for p in order if taken[p] < len(pools[p])]
        best = max(room, key=lambda p: count * len(pools[p]) / fleet - taken[p])
        taken[best] += 1
    return tuple(sorted(s for p in order for s in pools[p][: taken[p]]))
