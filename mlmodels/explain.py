"""Explain one prediction: Transformer attention over time, fusion weights, feature attribution.

* attention: the last layer's attention from the final time step to every step of the window
  (averaged over heads);
* fusion weights: how much the fused vector drew on each path (xLSTM, Transformer);
* gradient x input: ``x * d(head)/dx`` summed over the window, per feature, for the predicted
  1-bar log return and for the up-minus-down direction logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` found for one window."""

    attention: np.ndarray | None  # (T,)
    fusion: dict[str, float]
    grad_x_input: dict[str, np.ndarray]  # target -> (F,)
    features: tuple[str, ...]
    prediction: dict[str, float]


def explain(
    model: nn.Module, x: torch.Tensor, pos: torch.Tensor, features: tuple[str, ...]
) -> Explanation:
    """Explain ``model`` on one window ``x`` (1, T, F) with position state ``pos`` (1, 3)."""
    model.eval()
    tf = getattr(model, "transformer", None)
    if tf is not None:
        tf.keep_attention(True)
    attributions: dict[str, np.ndarray] = {}
    out: dict[str, torch.Tensor] = {}
    for target in ("return_1", "direction_up_minus_down"):
        xi = x.clone().requires_grad_(True)
        out = model(xi, pos)
        y = (
            out["price"][0, 0]
            if target == "return_1"
            else out["direction"][0, 2] - out["direction"][0, 0]
        )
        (grad,) = torch.autograd.grad(y, xi)
        attributions[target] = (grad * xi).detach()[0].sum(dim=0).numpy()
    attention = None
    if tf is not None:
        last = tf.layers[-1].last_attention
        attention = last[0, -1].numpy() if last is not None else None
        tf.keep_attention(False)
    fusion_mod = getattr(model, "fusion", None)
    names = [n for n in ("xlstm", "transformer") if getattr(model, n, None) is not None]
    fusion: dict[str, float] = {}
    if fusion_mod is not None and fusion_mod.last_weights is not None:
        fusion = dict(zip(names, fusion_mod.last_weights[0].tolist(), strict=True))
    out = {k: v.detach() for k, v in out.items()}
    pred = {
        "return_1": float(out["price"][0, 0]),
        "p_up": float(torch.softmax(out["direction"], -1)[0, 2]),
        "confidence": float(out["confidence"][0]),
    }
    return Explanation(attention, fusion, attributions, features, pred)


def plot_explanation(exp: Explanation, out: Path, title: str, top: int = 15) -> Path:
    """Write the explanation as one PNG: attention, fusion weights, top features per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    if exp.attention is not None:
        ax.bar(
            np.arange(len(exp.attention)) - len(exp.attention) + 1, exp.attention, color="#4477aa"
        )
        ax.set_xlabel("bars before the decision (0 = decision bar)")
    ax.set_title("Transformer attention from the last step")
    ax = axes[0, 1]
    ax.bar(list(exp.fusion), list(exp.fusion.values()), color="#228833")
    ax.set_ylim(0, 1)
    ax.set_title("fusion weights over paths")
    for ax, (target, vals) in zip(axes[1], exp.grad_x_input.items(), strict=True):
        order = np.argsort(-np.abs(vals))[:top][::-1]
        ax.barh(
            [exp.features[i] for i in order],
            vals[order],
            color=["#cc3311" if v < 0 else "#0077bb" for v in vals[order]],
        )
        ax.set_title(f"gradient x input: {target}")
    p = exp.prediction
    fig.suptitle(
        f"{title}\npredicted 1-bar log return {p['return_1']:+.4f}, P(up) {p['p_up']:.2f}, "
        f"confidence {p['confidence']:.2f}"
    )
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
