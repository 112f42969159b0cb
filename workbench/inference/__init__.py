"""Inference stage: rolling windows and the fast engine.

Import the heavy parts from their modules: :mod:`workbench.inference.engine` (the fast path),
:mod:`workbench.inference.reference` (pytorch-forecasting's own predict path). The forecast type
lives in :mod:`workbench.forecast`, outside this package, for the processes that never run the
network (the daemon's request process, the dashboard).
"""
