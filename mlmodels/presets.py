"""The architecture presets as data: ``ModelConfig`` (one architecture's sizes) and the named
presets in ``ARCHITECTURES``. Plain values, no torch: the model is built from them by
:func:`mlmodels.nets.model.build_model`; listing or checking a preset needs no network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from core.config import DataConfig
from core.errors import ConfigError, unknown_name


@dataclass(frozen=True, kw_only=True)
class ModelConfig(DataConfig):
    """One architecture's sizes. ``n_features`` and ``window`` are set from the data.

    ``streaming``: the xLSTM path carries its state from bar to bar (``init_state`` / ``step`` /
    ``forward_sequence`` on the model) and the Transformer path attends causally over the last
    ``window`` bars with ALiBi biases instead of restarting on every window. Cards written
    before the field existed load as ``False``.
    """

    arch: str
    n_features: int = 60
    window: int = 60
    xlstm_hidden: int = 0
    xlstm_layers: int = 0
    xlstm_heads: int = 4
    slstm_at: tuple[int, ...] = (0,)
    tf_d_model: int = 0
    tf_layers: int = 0
    tf_heads: int = 4
    fusion_d: int = 128
    head_hidden: int = 128
    dropout: float = 0.3
    ensemble: bool = False
    rnn: str = "xlstm"
    extra: dict[str, int] = field(default_factory=dict)
    streaming: bool = False

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.window < 2:
            raise ConfigError(
                f"n_features must be >= 1 and window >= 2, got {self.n_features}, {self.window}"
            )
        if not (self.xlstm_layers or self.tf_layers):
            raise ConfigError(f"{self.arch}: needs an xLSTM or a Transformer path")
        if self.rnn not in ("xlstm", "lstm"):
            raise ConfigError(
                f"rnn must be 'xlstm' or 'lstm' (the nn.LSTM baseline), got {self.rnn!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.streaming and (self.ensemble or self.rnn != "xlstm" or not self.xlstm_layers):
            raise ConfigError(
                f"{self.arch}: streaming needs an xLSTM path (rnn='xlstm', xlstm_layers >= 1) "
                "and no task ensemble"
            )
        if self.tf_layers and self.tf_d_model % self.tf_heads:
            raise ConfigError(
                f"tf_d_model {self.tf_d_model} must be divisible by tf_heads {self.tf_heads}"
            )

    def with_data(self, n_features: int, window: int) -> ModelConfig:
        return dataclasses.replace(self, n_features=n_features, window=window)


_PRESETS: tuple[ModelConfig, ...] = (
    ModelConfig(
        arch="seed-full",
        xlstm_hidden=512,
        xlstm_layers=3,
        xlstm_heads=4,
        slstm_at=(1,),
        tf_d_model=256,
        tf_layers=3,
        tf_heads=8,
        fusion_d=1024,
        head_hidden=2048,
    ),
    ModelConfig(
        arch="efficient-hybrid",
        xlstm_hidden=256,
        xlstm_layers=2,
        slstm_at=(1,),
        tf_d_model=128,
        tf_layers=2,
        tf_heads=4,
        fusion_d=512,
        head_hidden=896,
    ),
    ModelConfig(
        arch="simplex-lstm",
        xlstm_hidden=256,
        xlstm_layers=2,
        slstm_at=(1,),
        fusion_d=256,
        head_hidden=512,
    ),
    ModelConfig(
        arch="task-ensemble",
        xlstm_hidden=192,
        xlstm_layers=2,
        slstm_at=(1,),
        tf_d_model=128,
        tf_layers=2,
        tf_heads=4,
        fusion_d=128,
        head_hidden=128,
        ensemble=True,
    ),
    ModelConfig(
        arch="tiny",
        xlstm_hidden=48,
        xlstm_layers=1,
        xlstm_heads=4,
        slstm_at=(0,),
        tf_d_model=48,
        tf_layers=1,
        tf_heads=4,
        fusion_d=48,
        head_hidden=48,
        dropout=0.1,
    ),
)


def _streaming(base: str, arch: str) -> ModelConfig:
    """The preset ``base`` at the same sizes, streaming."""
    (cfg,) = (c for c in _PRESETS if c.arch == base)
    return dataclasses.replace(cfg, arch=arch, streaming=True)


ARCHITECTURES: dict[str, ModelConfig] = {
    c.arch: c
    for c in (
        *_PRESETS,
        _streaming("tiny", "tiny-stream"),
        _streaming("efficient-hybrid", "hybrid-stream"),
    )
}


def get_architecture(name: str) -> ModelConfig:
    """The preset called ``name``."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    raise unknown_name("architecture", name, ARCHITECTURES)
