"""Typed training configuration, loadable from YAML, a dict (CLI, notebook parameters) or a preset."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench import contract as c
from workbench.errors import ConfigError

PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "64-true")
SAMPLINGS = ("uniform", "incidents")
LOSSES = ("quantile", "window_scaled")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored in the bundle's ``config.json``.

    Attributes:
        targets: Contract metrics the model forecasts (all eight by default).
        max_encoder_length: Steps of history the network reads (288 = 24 h).
        min_encoder_length: Fewest steps a server needs before it gets a forecast (warm-up).
        horizon: Steps forecast (96 = 8 h).
        quantiles: Forecast quantiles; the bands are their outer pair.
        hidden_size: Width of the TFT.
        attention_head_size: Attention heads.
        hidden_continuous_size: Width of the continuous-variable embeddings.
        lstm_layers: LSTM layers of the encoder and decoder.
        dropout: Dropout rate.
        learning_rate: Adam learning rate.
        gradient_clip_val: Gradient norm clip.
        batch_size: Training batch size.
        max_epochs: Upper bound on epochs; early stopping usually ends sooner.
        patience: Epochs without validation improvement before stopping.
        min_delta: Smallest fall of the validation loss that counts as an improvement (absolute,
            in the loss's units): a noisy plateau that creeps down by less ends the fit.
        max_time_minutes: Wall-clock bound on the fit (Lightning's ``max_time``); ``None``: no bound.
        limit_train_batches: Batches per epoch on each rank (an int), or a share of one pass over
            the training windows (a float).
        limit_val_batches: Validation batches (an int) or fraction (a float).
        validation_steps: Trailing steps of every series held out for validation.
        val_stride: Steps between the decoder starts of validation windows (one every
            ``val_stride`` steps of the validation period whose horizon fits in it).
        val_encoder_lengths: History lengths validated per server, spread evenly from
            ``min_encoder_length`` to ``max_encoder_length`` plus each server's longest (0: every
            length, one validation window per step of history, which is slow at 288 steps).
        randomize_length: Train on randomly shortened histories so that warm-up forecasts are good.
        sampling: How training windows are drawn: ``uniform``, or ``incidents`` (windows whose
            decoder holds an incident's precursor or onset weigh ``incident_weight``; needs the
            data's ``incidents.parquet``). Validation is never re-weighted.
        incident_weight: Weight of an incident window under ``sampling="incidents"``.
        loss: ``quantile`` (in each metric's units, targets weighted by their typical spread) or
            ``window_scaled`` (each window's loss divided by its own history's spread, so an
            idle server's window counts as much as a busy one's; what a fleet of unlike real
            servers needs).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``cuda``, ...).
        devices: Lightning devices (``auto``, a count, or a list as text).
        num_nodes: Machines of a multi-node run (Lightning's ``num_nodes``).
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        precision: Lightning precision; ``auto`` is ``bf16-mixed`` on a CUDA device with bf16,
            else ``32-true``.
        num_workers: Processes that gather batches (0: in the training process, which is
            usually fastest: a batch takes milliseconds).
        seed: Seed of every random choice in training.
    """

    targets: tuple[str, ...] = c.METRIC_NAMES
    max_encoder_length: int = c.MAX_ENCODER_STEPS
    min_encoder_length: int = 36
    horizon: int = c.HORIZON_STEPS
    quantiles: tuple[float, ...] = c.QUANTILE_LEVELS
    hidden_size: int = 32
    attention_head_size: int = 4
    hidden_continuous_size: int = 8
    lstm_layers: int = 1
    dropout: float = 0.1
    learning_rate: float = 3e-3
    gradient_clip_val: float = 0.1
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 4
    min_delta: float = 0.0
    max_time_minutes: float | None = None
    limit_train_batches: int | float = 200
    limit_val_batches: int | float = 1.0
    validation_steps: int = c.HORIZON_STEPS
    val_stride: int = 24
    val_encoder_lengths: int = 0
    randomize_length: bool = True
    sampling: str = "uniform"
    incident_weight: float = 5.0
    loss: str = "quantile"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "targets", tuple(c.check_metric_names(self.targets, what="targets")))
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        if not self.targets:
            raise ConfigError(f"targets: at least one metric is needed; allowed: {', '.join(c.METRIC_NAMES)}")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"targets: each metric at most once, got {list(self.targets)}")
        if self.horizon != c.HORIZON_STEPS:
            raise ConfigError(f"horizon: the contract fixes it at {c.HORIZON_STEPS} steps, got {self.horizon}")
        if not 1 <= self.min_encoder_length <= self.max_encoder_length <= c.MAX_ENCODER_STEPS:
            raise ConfigError(
                "need 1 <= min_encoder_length <= max_encoder_length <= "
                f"{c.MAX_ENCODER_STEPS}, got {self.min_encoder_length} and {self.max_encoder_length}"
            )
        if list(self.quantiles) != sorted(self.quantiles) or not all(0 < q < 1 for q in self.quantiles):
            raise ConfigError(f"quantiles: increasing values in (0, 1) are allowed, got {list(self.quantiles)}")
        if len(self.quantiles) != 3 or self.quantiles[1] != 0.5:
            raise ConfigError(f"quantiles: three with 0.5 in the middle (p10/p50/p90), got {list(self.quantiles)}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"sampling: allowed {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: allowed {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.incident_weight > 0:
            raise ConfigError(f"incident_weight: a weight > 0 is allowed, got {self.incident_weight}")
        batches = self.limit_train_batches
        if isinstance(batches, bool) or not batches > 0 or (isinstance(batches, float) and batches > 1):
            raise ConfigError(f"limit_train_batches: a count >= 1 or a share in (0, 1], got {batches!r}")
        if self.num_nodes < 1:
            raise ConfigError(f"num_nodes: must be >= 1, got {self.num_nodes}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: allowed {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("hidden_size", "attention_head_size", "hidden_continuous_size", "lstm_layers", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_epochs < 1 or self.patience < 1 or self.validation_steps < 1 or self.val_stride < 1:
            raise ConfigError("max_epochs, patience, validation_steps and val_stride must be >= 1")
        if not self.min_delta >= 0:
            raise ConfigError(f"min_delta must be >= 0, got {self.min_delta!r}")
        if self.val_encoder_lengths < 0:
            raise ConfigError(f"val_encoder_lengths: >= 0 is allowed (0: every length), got {self.val_encoder_lengths}")
        limit = self.max_time_minutes
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0):
            raise ConfigError(f"max_time_minutes: a number of minutes > 0, or null for no bound; got {limit!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: allowed [0, 1), got {self.dropout}")
        if self.extra:
            known = ", ".join(f.name for f in dataclasses.fields(self) if f.name != "extra")
            raise ConfigError(f"unknown setting(s) {sorted(self.extra)}; allowed: {known}")

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            allowed = _TYPES.get(str(f.type))
            value = getattr(self, f.name)
            if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
                raise ConfigError(f"{f.name}: expected {f.type}, got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from plain data, naming any unknown key (rather than ignoring it)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load a config from a YAML mapping of field names to values."""
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """Return a named preset (see :data:`PRESETS`) with optional overrides."""
        if name not in PRESETS:
            raise ConfigError(f"preset: allowed {', '.join(PRESETS)}, got {name!r}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-friendly data."""
        data = dataclasses.asdict(self)
        data.pop("extra")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with some fields changed (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "int | float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "int | str": (int, str),
    "tuple[str, ...]": (tuple,),
    "tuple[float, ...]": (tuple,),
}

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: for tests and smoke runs, not for forecasting.
    "tiny": {
        "hidden_size": 8,
        "attention_head_size": 1,
        "hidden_continuous_size": 4,
        "max_encoder_length": 48,
        "min_encoder_length": 12,
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "batch_size": 32,
    },
    # The small model committed as models/demo (8 h of history): early stopping within 5 minutes
    # on 2 CPU cores (`make demo-model`).
    "demo": {
        "hidden_size": 8,
        "attention_head_size": 1,
        "hidden_continuous_size": 8,
        "max_encoder_length": 96,
        "min_encoder_length": 24,
        "batch_size": 128,
        "max_epochs": 60,
        "limit_train_batches": 30,
        "patience": 3,
        "min_delta": 2e-4,
        "validation_steps": 288,
        "val_encoder_lengths": 4,
        "max_time_minutes": 8.0,
    },
    # The reference model of the evaluation report (`make model`), sized by the study of
    # notebooks/05_model_size.ipynb (`make size-study`: h8-a1-l1 had the best held-out MASE of six
    # sizes from h4 to h32, and the rule takes the cheapest within 2 % of the best); 24 h of
    # history. Early stopping ends it (`max_time_minutes` is a safety bound); validation reads a
    # day of each server at 8 history lengths.
    "reference": {
        "hidden_size": 8,
        "attention_head_size": 1,
        "hidden_continuous_size": 8,
        "batch_size": 128,
        "max_epochs": 60,
        "limit_train_batches": 100,
        "patience": 5,
        "min_delta": 2.5e-4,
        "validation_steps": 288,
        "val_encoder_lengths": 8,
        "max_time_minutes": 30.0,
    },
    # Real fleets (`make real-model` on the Bitbrains VMs): unlike the simulator's servers, real
    # VMs differ by orders of magnitude in level and spread, so each window's loss is taken in
    # its own scale (``window_scaled``); twice the reference width for the wider variety, and
    # validation at 4 history lengths to keep an epoch short on 2 cores.
    "real": {
        "hidden_size": 16,
        "attention_head_size": 2,
        "hidden_continuous_size": 8,
        "batch_size": 128,
        "max_epochs": 80,
        "limit_train_batches": 100,
        "patience": 6,
        "min_delta": 1e-3,
        "validation_steps": 288,
        "val_encoder_lengths": 4,
        "loss": "window_scaled",
        "max_time_minutes": 80.0,
    },
}
