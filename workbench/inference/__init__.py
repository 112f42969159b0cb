"""Inference stage: windows, the fast engine, and the forecast type.

Import the heavy parts from their modules: :mod:`workbench.inference.engine` (the fast path),
:mod:`workbench.inference.reference` (pytorch-forecasting's own predict path). This package's
top level stays light (numpy and polars only) for the service and the dashboard.
"""

from workbench.inference.forecast import SOURCE_MISSING, SOURCE_TFT, SOURCE_WARMING_UP, Forecast

__all__ = ["SOURCE_MISSING", "SOURCE_TFT", "SOURCE_WARMING_UP", "Forecast"]
