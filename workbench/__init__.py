"""Research workbench for predictive server monitoring.

Forecasts every server of a fleet 8 hours ahead with a multi-target Temporal Fusion
Transformer. Stages: :mod:`workbench.contract` (the data contract), :mod:`workbench.simulator`,
:mod:`workbench.data`, :mod:`workbench.features`, :mod:`workbench.model`,
:mod:`workbench.inference`, :mod:`workbench.cli`.
"""

__version__ = "0.1.0"
