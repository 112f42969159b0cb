"""What an import did: counts of every policy applied, skipped servers and files, notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from workbench import contract


@dataclass
class OutOfRange:
    """Samples of one metric outside the contract range.

    Attributes:
        above: Samples above the range's top.
        below: Samples below the range's bottom.
        non_finite: NaN or infinite samples (always set to null).
        max_seen: Largest finite value seen above the range, ``None`` when none.
        min_seen: Smallest finite value seen below the range, ``None`` when none.
    """

    above: int = 0
    below: int = 0
    non_finite: int = 0
    max_seen: float | None = None
    min_seen: float | None = None


@dataclass
class ImportReport:
    """Counts of every policy an adapter applied, in the order they were applied.

    Attributes:
        source: What was read (a path, or several joined by ``, ``).
        adapter: ``bitbrains``, ``nab`` or ``generic``.
        clip: Whether out-of-range samples were clipped (else set to null).
        files_read: Files read.
        rows_in: Samples read.
        bad_timestamps: Samples dropped for a missing, unparseable or out-of-contract time.
        duplicates: Identical samples (same server, time and values) dropped.
        non_numeric: Per metric, source values that were not numbers (set to null).
        out_of_range: Per metric, samples outside the contract range.
        combined: Samples merged into a grid step that already had a sample.
        trimmed_rows: Grid rows dropped before each server's first complete step.
        trimmed_servers: Servers that lost leading rows.
        unmapped: Per metric, servers without a single value of it (left null).
        skipped_servers: Server name to the reason it was left out.
        skipped_files: File to the reason it was not read.
        rows_out: Contract rows in the result.
        servers_out: Servers in the result.
        missing_steps: Grid steps absent inside servers' spans (left absent, not filled).
        nulls_out: Per metric, null values left in the result.
        start: First timestamp in the result.
        end: Last timestamp in the result.
        notes: Assumptions and findings worth knowing (units, detected formats).
        seconds: Wall time of the import.
    """

    source: str
    adapter: str
    clip: bool = True
    files_read: int = 0
    rows_in: int = 0
    bad_timestamps: int = 0
    duplicates: int = 0
    non_numeric: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, OutOfRange] = field(default_factory=dict)
    combined: int = 0
    trimmed_rows: int = 0
    trimmed_servers: int = 0
    unmapped: dict[str, list[str]] = field(default_factory=dict)
    skipped_servers: dict[str, str] = field(default_factory=dict)
    skipped_files: dict[str, str] = field(default_factory=dict)
    rows_out: int = 0
    servers_out: int = 0
    missing_steps: int = 0
    nulls_out: dict[str, int] = field(default_factory=dict)
    start: datetime | None = None
    end: datetime | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """Return the report as human-readable lines, one per policy or finding."""
        out = [
            f"{self.adapter} import of {self.source}",
            f"read {self.rows_in:,} samples from {self.files_read:,} file(s)",
        ]
        out += [f"note: {note}" for note in self.notes]
        out += [f"skipped file {name}: {reason}" for name, reason in self.skipped_files.items()]
        if self.bad_timestamps:
            out.append(f"timestamps: {self.bad_timestamps:,} samples without a valid time dropped")
        out.append(f"duplicates: {self.duplicates:,} identical samples dropped")
        out += [f"{m}: {n:,} non-numeric values set to null" for m, n in self.non_numeric.items() if n]
        out += self._range_lines()
        out.append(
            f"grid: floored to {contract.STEP_SECONDS // 60}-minute steps; {self.combined:,} samples combined "
            "into a step with another (contract aggregation mean/max)"
        )
        out.append(f"leading gaps: {self.trimmed_rows:,} rows trimmed on {self.trimmed_servers:,} server(s)")
        out += [f"{m}: no value at all on {len(s)} server(s), left null: {_names(s)}" for m, s in self.unmapped.items()]
        out += [f"skipped server {name}: {reason}" for name, reason in self.skipped_servers.items()]
        out.append(f"result: {self.rows_out:,} rows for {self.servers_out:,} server(s){self._span()}")
        out.append(f"missing steps inside series: {self.missing_steps:,} (left absent, not filled)")
        nulls = ", ".join(f"{m} {n:,}" for m, n in self.nulls_out.items() if n)
        out.append(f"null values left: {nulls or 'none'} (metrics the source lacks are null columns)")
        out.append(f"took {self.seconds:.1f} s")
        return out

    def summary(self) -> str:
        """Return :meth:`lines` joined by newlines."""
        return "\n".join(self.lines())

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-friendly data."""
        data: dict[str, Any] = {
            key: getattr(self, key) for key in self.__dataclass_fields__ if key not in ("out_of_range", "start", "end")
        }
        data["out_of_range"] = {m: vars(r).copy() for m, r in self.out_of_range.items()}
        data["start"] = self.start.isoformat() if self.start else None
        data["end"] = self.end.isoformat() if self.end else None
        return data

    def _range_lines(self) -> list[str]:
        action = "clipped to" if self.clip else "set to null, outside"
        lines = []
        for name, r in self.out_of_range.items():
            metric = contract.METRIC_BY_NAME[name]
            if r.above:
                bound = f"{metric.high:g}" if self.clip else metric.allowed()
                lines.append(
                    f"{name}: {r.above:,} samples above {metric.high:g} {action} {bound} (max seen {r.max_seen:.4g})"
                )
            if r.below:
                bound = f"{metric.low:g}" if self.clip else metric.allowed()
                lines.append(
                    f"{name}: {r.below:,} samples below {metric.low:g} {action} {bound} (min seen {r.min_seen:.4g})"
                )
            if r.non_finite:
                lines.append(f"{name}: {r.non_finite:,} NaN/infinite samples set to null")
        if not lines:
            lines.append("range: no sample outside the contract ranges")
        return lines

    def _span(self) -> str:
        if self.start is None or self.end is None:
            return ""
        return f", {self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} UTC"


@dataclass
class ImportResult:
    """A contract frame and the report of how it was made.

    Attributes:
        frame: Contract-valid rows (:data:`workbench.contract.COLUMNS`), sorted by server then time.
        report: What the import did.
    """

    frame: pl.DataFrame
    report: ImportReport


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
