"""The multi-task model: xLSTM and/or Transformer paths, attention fusion, shared heads.

Architectures are presets (``ARCHITECTURES``); every preset takes ``(x, pos)`` with ``x`` of
shape (B, T, F) (scaled features, T = window) and ``pos`` (B, 3) position state, and returns the
dict described in :mod:`mlmodels.nets.heads`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from core.config import DataConfig
from core.errors import ConfigError, unknown_name
from mlmodels.nets.heads import AttentionFusion, MultiTaskHeads, PositionEncoder
from mlmodels.nets.transformer import TransformerPath
from mlmodels.nets.xlstm import XLSTMStack


@dataclass(frozen=True, kw_only=True)
class ModelConfig(DataConfig):
    """One architecture's sizes. ``n_features`` and ``window`` are set from the data."""

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
        if self.tf_layers and self.tf_d_model % self.tf_heads:
            raise ConfigError(
                f"tf_d_model {self.tf_d_model} must be divisible by tf_heads {self.tf_heads}"
            )

    def with_data(self, n_features: int, window: int) -> ModelConfig:
        return dataclasses.replace(self, n_features=n_features, window=window)


ARCHITECTURES: dict[str, ModelConfig] = {
    c.arch: c
    for c in (
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
}


def get_architecture(name: str) -> ModelConfig:
    """The preset called ``name``."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    raise unknown_name("architecture", name, ARCHITECTURES)


class LSTMPath(nn.Module):
    """``torch.nn.LSTM`` in place of the xLSTM stack: the baseline of equal size."""

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq, _ = self.lstm(x)
        return seq, seq[:, -1]


def lstm_baseline(cfg: ModelConfig) -> ModelConfig:
    """The same model with ``nn.LSTM`` whose hidden size matches the xLSTM stack's parameters."""
    target = count_parameters(
        XLSTMStack(
            cfg.n_features,
            cfg.xlstm_hidden,
            cfg.xlstm_layers,
            num_heads=cfg.xlstm_heads,
            slstm_at=cfg.slstm_at,
        )
    )
    layers = cfg.xlstm_layers
    best = min(
        range(8, 2049, 2),
        key=lambda h: abs(count_parameters(nn.LSTM(cfg.n_features, h, layers)) - target),
    )
    return dataclasses.replace(cfg, arch=f"{cfg.arch}/lstm", rnn="lstm", xlstm_hidden=best)


class MultiTaskModel(nn.Module):
    """xLSTM path + Transformer path -> attention fusion (+ position state) -> heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        sizes: list[int] = []
        self.xlstm: nn.Module | None = None
        self.transformer: TransformerPath | None = None
        if cfg.xlstm_layers and cfg.rnn == "lstm":
            self.xlstm = LSTMPath(cfg.n_features, cfg.xlstm_hidden, cfg.xlstm_layers, cfg.dropout)
            sizes.append(cfg.xlstm_hidden)
        elif cfg.xlstm_layers:
            self.xlstm = XLSTMStack(
                cfg.n_features,
                cfg.xlstm_hidden,
                cfg.xlstm_layers,
                num_heads=cfg.xlstm_heads,
                slstm_at=cfg.slstm_at,
                dropout=cfg.dropout,
            )
            sizes.append(cfg.xlstm_hidden)
        if cfg.tf_layers:
            self.transformer = TransformerPath(
                cfg.n_features,
                cfg.tf_d_model,
                cfg.tf_layers,
                cfg.tf_heads,
                dropout=cfg.dropout,
                max_len=max(cfg.window, 64),
            )
            sizes.append(cfg.tf_d_model)
        self.pos = PositionEncoder(cfg.fusion_d)
        self.fusion = AttentionFusion(sizes, cfg.fusion_d, num_heads=4, dropout=cfg.dropout)
        self.heads = MultiTaskHeads(cfg.fusion_d, cfg.head_hidden, cfg.dropout)

    def summaries(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        if self.xlstm is not None:
            out.append(self.xlstm(x)[1])
        if self.transformer is not None:
            out.append(self.transformer(x)[1])
        return out

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.fusion(self.summaries(x), self.pos(pos))
        return self.heads(z)


class TaskEnsemble(nn.Module):
    """Specialists: direction/action/confidence from a 2-layer xLSTM, price from a 2-layer
    Transformer, volatility/risk from a 1-layer MLP over the last bar; same output contract."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.xlstm = XLSTMStack(
            cfg.n_features,
            cfg.xlstm_hidden,
            cfg.xlstm_layers,
            num_heads=cfg.xlstm_heads,
            slstm_at=cfg.slstm_at,
            dropout=cfg.dropout,
        )
        self.transformer = TransformerPath(
            cfg.n_features,
            cfg.tf_d_model,
            cfg.tf_layers,
            cfg.tf_heads,
            dropout=cfg.dropout,
            max_len=max(cfg.window, 64),
        )
        self.pos = PositionEncoder(cfg.fusion_d)
        d = cfg.fusion_d
        self.dir_in = nn.Linear(cfg.xlstm_hidden, d)
        self.price_in = nn.Linear(cfg.tf_d_model, d)
        self.risk_in = nn.Sequential(nn.Linear(cfg.n_features, d), nn.GELU())
        self.dir_heads = MultiTaskHeads(d, cfg.head_hidden, cfg.dropout)
        self.price_heads = MultiTaskHeads(d, cfg.head_hidden, cfg.dropout)
        self.risk_heads = MultiTaskHeads(d, cfg.head_hidden, cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.pos(pos)
        a = self.dir_heads(self.dir_in(self.xlstm(x)[1]) + p)
        b = self.price_heads(self.price_in(self.transformer(x)[1]))
        c = self.risk_heads(self.risk_in(x[:, -1]))
        return {
            "price": b["price"],
            "direction": a["direction"],
            "action": a["action"],
            "size": a["size"],
            "confidence": a["confidence"],
            "volatility": c["volatility"],
            "risk": c["risk"],
        }


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the network for ``cfg``."""
    return TaskEnsemble(cfg) if cfg.ensemble else MultiTaskModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
