"""The multi-task model: xLSTM and/or Transformer paths, attention fusion, shared heads.

Architectures are presets (``ARCHITECTURES``); every preset takes ``(x, pos)`` with ``x`` of
shape (B, T, F) (scaled features, T = window) and ``pos`` (B, 3) position state, and returns the
dict described in :mod:`mlmodels.nets.heads`.

Streaming presets (``ModelConfig.streaming``) also run bar by bar, carrying their state instead
of restarting on every window (:class:`MultiTaskModel`: ``init_state``, ``step``,
``forward_sequence``, ``forward_chunk``). The state is a flat dict of batch-first tensors
(:mod:`mlmodels.nets.streaming`), so a server can keep one per session and batch sessions.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from core.errors import ConfigError
from mlmodels.nets.heads import AttentionFusion, MultiTaskHeads, PositionEncoder
from mlmodels.nets.streaming import STREAM_CHUNK, State, per_step_positions, prefixed, unprefixed
from mlmodels.nets.transformer import TransformerPath
from mlmodels.nets.xlstm import XLSTMStack
from mlmodels.presets import ARCHITECTURES, ModelConfig, get_architecture

__all__ = ["ARCHITECTURES", "ModelConfig", "build_model", "count_parameters", "get_architecture"]


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
    return dataclasses.replace(
        cfg, arch=f"{cfg.arch}/lstm", rnn="lstm", xlstm_hidden=best, streaming=False
    )


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
                positions="alibi" if cfg.streaming else "sinusoidal",
                attention_window=cfg.window if cfg.streaming else None,
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

    def paths(self, x: torch.Tensor) -> torch.Tensor:
        """The paths' summaries of windows ``x`` side by side, ``(B, D)``: everything of the
        forward pass that reads the window (batched inference scores them ahead)."""
        return torch.cat(self.summaries(x), dim=-1)

    def from_paths(self, s: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads from :meth:`paths`' output and the position state: ``forward(x, pos)``
        equals ``from_paths(paths(x), pos)``."""
        parts = [p.contiguous() for p in s.split(self.fusion.sizes, dim=-1)]
        return self.heads(self.fusion(parts, self.pos(pos)))

    # ------------------------------------------------------------------------ streaming

    def init_state(self, batch: int) -> State:
        """The state before the first bar for ``batch`` streams: ``"xlstm.*"`` (every block's
        memory and convolution inputs) and ``"transformer.*"`` (the bounded key/value caches and
        the bars seen), each a batch-first tensor."""
        xlstm = self._stream_paths()
        like = next(self.parameters())
        state = prefixed("xlstm", xlstm.initial_state(batch, like))
        if self.transformer is not None:
            state.update(prefixed("transformer", self.transformer.initial_state(batch, like)))
        return state

    def step(
        self, x: torch.Tensor, pos: torch.Tensor, state: State
    ) -> tuple[dict[str, torch.Tensor], State]:
        """One bar: ``x`` ``(B, F)``, ``pos`` ``(B, 3)`` -> the heads for that bar and the
        state after it."""
        out, new = self.forward_chunk(x[:, None], pos[:, None], state)
        return {k: v[:, 0] for k, v in out.items()}, new

    def forward_sequence(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads at every bar of ``x`` ``(B, T, F)`` from the start of the stream; ``pos``
        ``(B, T, 3)`` (or ``(B, 3)`` for every bar). Each output has ``T`` after the batch."""
        return self.forward_chunk(x, pos, self.init_state(x.shape[0]))[0]

    def forward_chunk(
        self, x: torch.Tensor, pos: torch.Tensor, state: State
    ) -> tuple[dict[str, torch.Tensor], State]:
        """Continue the streams in ``state`` with ``x`` ``(B, T, F)``: the heads at every bar
        and the state after the last (for truncated BPTT, detach it between chunks). Any split
        of a sequence into chunks gives the same outputs as one call."""
        pos = per_step_positions(pos, x.shape[:2])
        seq, state = self.paths_sequence(x, state)
        bsz, steps = pos.shape[:2]
        out = self.from_paths(seq.flatten(0, 1), pos.flatten(0, 1))
        return {k: v.unflatten(0, (bsz, steps)) for k, v in out.items()}, state

    def paths_sequence(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The streaming counterpart of :meth:`paths`: the paths' outputs at every bar of
        ``x`` ``(B, T, F)`` continuing ``state``, ``(B, T, D)``, and the state after the last
        bar. ``from_paths`` of one bar's row gives that bar's heads (the position state enters
        only there), so a backtest scores a whole stream ahead and applies its positions."""
        xlstm = self._stream_paths()
        seqs: list[torch.Tensor] = []
        for start in range(0, x.shape[1], STREAM_CHUNK):
            xc = x[:, start : start + STREAM_CHUNK]
            seq, xs = xlstm.forward_state(xc, unprefixed("xlstm", state))
            parts = [seq]
            new = prefixed("xlstm", xs)
            if self.transformer is not None:
                seq, ts = self.transformer.forward_state(xc, unprefixed("transformer", state))
                parts.append(seq)
                new.update(prefixed("transformer", ts))
            seqs.append(torch.cat(parts, dim=-1))
            state = new
        return torch.cat(seqs, dim=1), state

    def _stream_paths(self) -> XLSTMStack:
        if not self.cfg.streaming or not isinstance(self.xlstm, XLSTMStack):
            raise ConfigError(
                f"{self.cfg.arch} restarts on every window and does not stream; use a streaming "
                "preset (tiny-stream, hybrid-stream) to run bar by bar"
            )
        return self.xlstm


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
        return self._heads(self.xlstm(x)[1], self.transformer(x)[1], x[:, -1], pos)

    def paths(self, x: torch.Tensor) -> torch.Tensor:
        """The window-reading parts side by side, ``(B, D)``: the xLSTM and Transformer
        summaries and the last bar's features (see ``MultiTaskModel.paths``)."""
        return torch.cat([self.xlstm(x)[1], self.transformer(x)[1], x[:, -1]], dim=-1)

    def from_paths(self, s: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads from :meth:`paths`' output and the position state."""
        sizes = [self.cfg.xlstm_hidden, self.cfg.tf_d_model, self.cfg.n_features]
        a, b, c = (p.contiguous() for p in s.split(sizes, dim=-1))
        return self._heads(a, b, c, pos)

    def _heads(
        self, rec: torch.Tensor, att: torch.Tensor, last: torch.Tensor, pos: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        p = self.pos(pos)
        a = self.dir_heads(self.dir_in(rec) + p)
        b = self.price_heads(self.price_in(att))
        c = self.risk_heads(self.risk_in(last))
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
