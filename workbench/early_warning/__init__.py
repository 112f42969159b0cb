"""Early warning: features from forecasts, incident probabilities learned from ground truth."""

from workbench.early_warning.calibrator import IncidentCalibration, WindowModel, fit_window
from workbench.early_warning.dataset import WarningSet
from workbench.early_warning.features import FEATURES, WarningFeatures, warning_features

__all__ = ["FEATURES", "IncidentCalibration", "WarningFeatures", "WarningSet", "WindowModel", "fit_window",
           "warning_features"]  # fmt: skip
