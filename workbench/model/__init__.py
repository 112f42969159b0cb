"""Model stage: training config, dataset spec, TFT training and the safetensors + JSON bundle."""

from workbench.model.bundle import Bundle, load_bundle, save_bundle
from workbench.model.config import PRESETS, TrainConfig
from workbench.model.dataset import DatasetSpec

__all__ = ["PRESETS", "Bundle", "DatasetSpec", "TrainConfig", "load_bundle", "save_bundle"]
