"""The ``damaged/`` folder of a state folder: what recovery and repair set aside, never delete.

Every file moved or copied here gets a line in ``damaged/ledger.jsonl`` (time, action, file,
reason, and for a repair the records it gives up), so an operator can always see what a start
or a repair did not use and why.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DAMAGED = "damaged"
LEDGER = "ledger.jsonl"
REPAIR_HINT = "`workbench state check {dir}` says what is wrong and `workbench state repair {dir}` sets it aside"
_ASIDE_SEGMENT = re.compile(r"^log-(\d{8})\.wal\.")


def damaged_dir(directory: Path) -> Path:
    """Return (creating it) the ``damaged/`` folder of a state folder."""
    path = directory / DAMAGED
    path.mkdir(exist_ok=True)
    return path


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def record(directory: Path, action: str, file: str, reason: str, **extra: Any) -> None:
    """Append one line to the ledger."""
    line = {"time": datetime.now(UTC).isoformat(), "action": action, "file": file, "reason": reason, **extra}
    with open(damaged_dir(directory) / LEDGER, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def set_aside(directory: Path, path: Path, reason: str, **extra: Any) -> str:
    """Move ``path`` into ``damaged/`` under a time-stamped name; return that name."""
    target = damaged_dir(directory) / f"{path.name}.{_stamp()}"
    path.rename(target)
    record(directory, "moved", target.name, reason, **extra)
    return target.name


def keep_copy(directory: Path, path: Path, reason: str) -> str:
    """Copy ``path`` into ``damaged/`` once per content (evidence before the log is cleaned up)."""
    folder = damaged_dir(directory)
    size = path.stat().st_size
    for old in folder.glob(f"{path.name}.*"):
        if old.stat().st_size == size and old.read_bytes() == path.read_bytes():
            return old.name
    target = folder / f"{path.name}.{_stamp()}"
    shutil.copy2(path, target)
    record(directory, "copied", target.name, reason)
    return target.name


def aside_segments(directory: Path) -> list[int]:
    """Numbers of the log segments that were moved to ``damaged/``."""
    folder = directory / DAMAGED
    if not folder.is_dir():
        return []
    return sorted({int(m.group(1)) for p in folder.iterdir() if (m := _ASIDE_SEGMENT.match(p.name))})


def ledger(directory: Path) -> list[dict[str, Any]]:
    """The ledger's lines, oldest first (an unreadable line is skipped)."""
    path = directory / DAMAGED / LEDGER
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def unaccounted_before(directory: Path, first: int) -> set[int]:
    """Segments before ``first`` that are neither set aside nor given up by a repair: records only a snapshot held."""
    return set(range(1, first)) - set(aside_segments(directory)) - accepted_gaps(directory)


def accepted_gaps(directory: Path) -> set[int]:
    """Segment numbers whose loss a repair accepted (their records are gone, and said so)."""
    gaps: set[int] = set()
    for line in ledger(directory):
        if line.get("action") == "accepted_gap":
            gaps.update(range(int(line["first"]), int(line["last"]) + 1))
    return gaps
