"""Adapters: real server metrics (Bitbrains, NAB, any CSV or parquet) into the data contract.

Each adapter maps its source to contract metrics and hands the samples to
:func:`workbench.adapters.policies.conform`, which applies the same policies to all of them
(grid, duplicates, ranges, leading gaps, unusable servers) and counts each in an
:class:`ImportReport`. ``workbench import`` (:mod:`workbench.adapters.cli`) writes the result
with :func:`workbench.data.write_parquet`.
"""

from workbench.adapters.bitbrains import read_bitbrains
from workbench.adapters.generic import ColumnMap, make_mapping, read_generic
from workbench.adapters.nab import nab_windows, read_nab
from workbench.adapters.policies import conform
from workbench.adapters.report import ImportReport, ImportResult, OutOfRange
from workbench.adapters.units import allowed_units, unit_factor

__all__ = ["ColumnMap", "ImportReport", "ImportResult", "OutOfRange", "allowed_units", "conform", "make_mapping",
           "nab_windows", "read_bitbrains", "read_generic", "read_nab", "unit_factor"]  # fmt: skip
