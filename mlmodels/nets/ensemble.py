"""An ensemble of registered models as one network: one ``.mar``, the usual heads.

Members read the same features over the same window (refused otherwise); each keeps its own
scaling: the ensemble's input is scaled with the first member's scaler (the card's), and every
member rescales it to its own (``(x * std_0 + mean_0 - mean_i) / std_i``, clipped at +-10 as
the handler clips). The heads combine the members' with weights ``w`` (normalised):

* ``mean``: the weighted mean of every head (direction and action as probabilities, returned
  as log-probabilities: the softmax of the output is the mean of the members' softmaxes);
* ``zscore``: the predicted returns are first divided by each member's spread of predictions
  (``scale``, measured when the ensemble is built), averaged, and multiplied back by the
  weighted mean spread, so a member that predicts larger moves does not dominate; the other
  heads as ``mean``;
* ``stack``: ``mean`` with weights fit when the ensemble is built (``btml models ensemble``
  fits them by non-negative least squares of the 1-bar return on data none of the members
  trained or validated on).

The members' disagreement lowers the confidence: ``confidence = mean confidence x (1 -
disagreement)``, where disagreement is the weighted standard deviation of the members'
``P(up) - P(down)`` (in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

METHODS = ("mean", "zscore", "stack")
_PROB_HEADS = ("direction", "action")
_MEAN_HEADS = ("size", "volatility", "risk")


@dataclass(frozen=True)
class EnsembleConfig:
    """What :class:`ModelEnsemble` needs besides its members (kept in the card)."""

    method: str = "mean"
    streaming: bool = False  # an ensemble restarts on every window


class ModelEnsemble(nn.Module):
    """Members ``(B, T, F)`` -> combined heads (module docstring)."""

    weights: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float],
        scalers: Sequence[tuple[Sequence[float], Sequence[float]]],
        method: str = "mean",
        scale: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.cfg = EnsembleConfig(method=method)
        self.members = nn.ModuleList(members)
        w = torch.tensor(list(weights), dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())
        self.register_buffer(
            "mean", torch.tensor([list(m) for m, _ in scalers], dtype=torch.float32)
        )
        self.register_buffer(
            "std", torch.tensor([list(s) for _, s in scalers], dtype=torch.float32)
        )
        spread = torch.tensor(list(scale) if scale is not None else [1.0] * len(members))
        self.register_buffer("scale", spread.to(torch.float32))
        self.path_sizes: list[int] = []

    def _inputs(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if i == 0:
            return x
        raw = x * self.std[0] + self.mean[0]
        return torch.clamp((raw - self.mean[i]) / self.std[i], -10.0, 10.0)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.combine([m(self._inputs(x, i), pos) for i, m in enumerate(self.members)])

    def paths(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's path summaries side by side (batched inference)."""
        parts = [m.paths(self._inputs(x, i)) for i, m in enumerate(self.members)]  # type: ignore[operator]
        self.path_sizes = [p.shape[-1] for p in parts]
        return torch.cat(parts, dim=-1)

    def from_paths(self, s: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = self.path_sizes or self._path_sizes(s.shape[-1])
        parts = s.split(sizes, dim=-1)
        return self.combine(
            [m.from_paths(p.contiguous(), pos) for m, p in zip(self.members, parts, strict=True)]  # type: ignore[operator]
        )

    def _path_sizes(self, total: int) -> list[int]:
        probe = torch.zeros(1, 2, self.mean.shape[1])
        sizes = [m.paths(probe).shape[-1] for m in self.members]  # type: ignore[operator]
        assert sum(sizes) == total, (sizes, total)
        self.path_sizes = sizes
        return sizes

    def combine(self, outs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The ensemble's heads from the members' (module docstring)."""
        w = self.weights
        out: dict[str, torch.Tensor] = {}
        price = torch.stack([o["price"] for o in outs])  # (M, B, H)
        if self.cfg.method == "zscore":
            z = price / self.scale[:, None, None]
            out["price"] = torch.einsum("m,mbh->bh", w, z) * (w * self.scale).sum()
        else:
            out["price"] = torch.einsum("m,mbh->bh", w, price)
        probs: dict[str, torch.Tensor] = {}
        for head in _PROB_HEADS:
            p = torch.stack([torch.softmax(o[head], dim=-1) for o in outs])
            probs[head] = torch.einsum("m,mbk->bk", w, p)
            out[head] = torch.log(probs[head].clamp_min(1e-12))
        for head in _MEAN_HEADS:
            out[head] = torch.einsum("m,mb->b", w, torch.stack([o[head] for o in outs]))
        edge = torch.stack([torch.softmax(o["direction"], -1) for o in outs])  # (M, B, 3)
        edge = edge[..., 2] - edge[..., 0]
        mean_edge = torch.einsum("m,mb->b", w, edge)
        spread = torch.sqrt(torch.einsum("m,mb->b", w, (edge - mean_edge) ** 2))
        conf = torch.einsum("m,mb->b", w, torch.stack([o["confidence"] for o in outs]))
        out["confidence"] = conf * (1.0 - spread.clamp(0.0, 1.0))
        return out
