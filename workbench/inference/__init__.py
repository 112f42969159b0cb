"""Inference stage: fleet forecasts from a bundle."""

from workbench.inference.forecast import SOURCE_TFT, SOURCE_WARMING_UP, Forecast, reference_forecast

__all__ = ["SOURCE_TFT", "SOURCE_WARMING_UP", "Forecast", "reference_forecast"]
