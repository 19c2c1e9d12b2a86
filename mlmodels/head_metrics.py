"""Out-of-sample metrics per head, each beside its naive baseline, with block-bootstrap intervals.

A model is scored from a prediction mapping shaped like the network's outputs: ``direction``
(n, 3) probabilities of down / flat / up, ``price`` (n, 3) log returns at the three horizons,
and, when it has them, ``volatility`` (n,) and ``confidence`` (n,). Per head:

* direction: accuracy, balanced accuracy (the mean of the three classes' recalls: 1/3 for any
  constant call) and log-loss. Naive: the training split's class prior (its majority class as
  the call).
* price at h bars: IC (Pearson correlation of predicted and realised h-bar log return), rank
  IC (Spearman's) and hit rate (the share of predictions whose sign is the realised return's,
  a zero on either side counting half). Naive: the training split's mean h-bar return, a
  constant (IC 0; its hit rate is the share of returns with its sign: a drift is no edge).
* volatility: MAE and rank correlation against the realised volatility of the next 24 bars.
  Naive: the trailing realised volatility (the same statistic over the 24 bars up to ``t``).
* confidence, against whether the direction call was right: its calibration, the expected
  calibration error (ECE: ``sum_b n_b / n * |mean confidence_b - hit rate_b|`` over 10
  equal-width bins), and the Brier score, which is compared. Naive: a constant at the
  validation split's hit rate (calibrated by construction, so only Brier can rank them).

Intervals come from a moving-block bootstrap over dates: the test dates are cut into blocks of
``L`` consecutive dates (wrapping around), blocks are drawn with replacement until the resample
has as many dates as the test split, and every sample (symbol) of a drawn date comes along. So
the serial correlation of overlapping labels and the correlation between symbols on a date stay
inside each resample. ``L = max(h, ceil(T ** (1/3)))`` for metrics over h-bar labels (24 for
volatility), ``T`` test dates; 95 % percentile intervals of ``reps`` seeded resamples (rank
correlations on a resample use the ranks within the whole test split, which keeps large test
splits fast). All models are scored on the same resamples, so each difference to a baseline
has an interval too. A head whose test split holds fewer than ``MIN_BLOCKS`` (20) blocks
is reported but not judged for an edge: its interval rests on too few independent stretches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

Prediction = Mapping[str, np.ndarray]
Stat = Callable[[np.ndarray], float]
LEVEL = 0.95
BOOTSTRAP_METHOD = "moving-block bootstrap over dates (every symbol of a drawn date together)"


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation; 0 when either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def hit_rate(pred: np.ndarray, real: np.ndarray) -> float:
    """Share of samples where the predicted and realised signs agree (a zero counts half)."""
    return float(_hits(pred, real).mean())


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width confidence bins."""
    which = np.minimum((np.clip(conf, 0, 1) * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        m = which == b
        total += m.sum() / len(conf) * abs(float(conf[m].mean()) - float(correct[m].mean()))
    return total


class BlockBootstrap:
    """Resamples of sample positions by blocks of dates (see the module docstring)."""

    def __init__(self, times: pd.DatetimeIndex | np.ndarray, reps: int = 500, seed: int = 0):
        codes, dates = pd.factorize(pd.DatetimeIndex(times), sort=True)
        self.n_dates = len(dates)
        self.reps, self.seed = reps, seed
        self._order = np.argsort(codes, kind="stable")
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(dates)))])
        self._cache: dict[int, list[np.ndarray]] = {}

    def block(self, horizon: int) -> int:
        """The block length, in dates, for metrics over ``horizon``-bar labels."""
        return max(1, min(self.n_dates, max(horizon, math.ceil(self.n_dates ** (1 / 3)))))

    def blocking(self, horizon: int) -> dict[str, float]:
        """``block`` (its length in dates) and ``blocks`` (test dates / block length: how many
        independent stretches the interval rests on)."""
        block = self.block(horizon)
        return {"block": block, "blocks": round(self.n_dates / block, 2)}

    def resamples(self, horizon: int) -> list[np.ndarray]:
        """``reps`` arrays of sample positions (seeded; cached per block length)."""
        length = self.block(horizon)
        if length not in self._cache:
            rng = np.random.default_rng([self.seed, length])
            n_blocks = math.ceil(self.n_dates / length)
            out = []
            for _ in range(self.reps if self.n_dates > 1 else 0):
                starts = rng.integers(0, self.n_dates, n_blocks)
                dates = ((starts[:, None] + np.arange(length)) % self.n_dates).ravel()
                dates = dates[: self.n_dates]
                out.append(
                    np.concatenate(
                        [self._order[self._offsets[d] : self._offsets[d + 1]] for d in dates]
                    )
                )
            self._cache[length] = out
        return self._cache[length]


@dataclass
class Scored:
    """One metric of one model: the value on the test split and its bootstrap replicates."""

    value: float
    samples: np.ndarray = field(default_factory=lambda: np.empty(0))

    def summary(self) -> dict[str, float | None]:
        """``{"value", "lo", "hi"}`` (the interval None without replicates)."""
        return {"value": _num(self.value), **_interval(self.samples)}


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _interval(samples: np.ndarray) -> dict[str, float | None]:
    s = samples[np.isfinite(samples)] if len(samples) else samples
    if len(s) < 20:
        return {"lo": None, "hi": None}
    lo, hi = np.quantile(s, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"lo": float(lo), "hi": float(hi)}


def score(stat: Stat, resamples: Sequence[np.ndarray], full: np.ndarray) -> Scored:
    """``stat`` (a function of sample positions) on positions ``full`` and on each resample."""
    return Scored(stat(full), np.array([stat(r) for r in resamples], dtype=np.float64))


def difference(a: Scored, b: Scored, higher_is_better: bool = True) -> dict[str, float | None]:
    """``a - b`` (``b - a`` when lower is better) with its interval from paired replicates."""
    sign = 1.0 if higher_is_better else -1.0
    n = max(len(a.samples), len(b.samples))
    sa = a.samples if len(a.samples) else np.full(n, a.value)
    sb = b.samples if len(b.samples) else np.full(n, b.value)
    return {"value": _num(sign * (a.value - b.value)), **_interval(sign * (sa - sb))}


@dataclass(frozen=True)
class Truth:
    """What the test split realised, and the naive forecasts known before it.

    ``returns`` maps each horizon (bars) to the realised log returns, ``mean_returns`` to the
    training split's mean (the naive forecast); ``trailing_volatility``
    is NaN where a sample has no 24 bars of its own history; ``confidence_base_rate`` is the
    validation split's hit rate of the network's direction calls."""

    direction: np.ndarray
    returns: Mapping[int, np.ndarray]
    mean_returns: Mapping[int, float]
    volatility: np.ndarray
    trailing_volatility: np.ndarray
    prior: np.ndarray
    confidence_base_rate: float | None = None


LOWER_IS_BETTER = frozenset({"logloss", "mae", "ece", "brier"})
# what each baseline family is called for each head
DIRECTION_NAMES = {"linear": "logistic", "lightgbm": "lightgbm"}
PRICE_NAMES = {"linear": "ridge", "lightgbm": "lightgbm"}
COMPARED = {
    "direction": ("accuracy", "logloss"),
    "price": ("rank_ic",),
    "volatility": ("mae",),
    "confidence": ("brier",),
}
# metric -> (a model's prediction -> its metric as a function of sample positions)
Stats = Mapping[str, Callable[[np.ndarray], Stat]]


def _mean_of(v: np.ndarray) -> Stat:
    return lambda i: float(v[i].mean())


def _corr_of(a: np.ndarray, b: np.ndarray) -> Stat:
    return lambda i: pearson(a[i], b[i])


def _balanced_of(y: np.ndarray, correct: np.ndarray) -> Stat:
    def stat(i: np.ndarray) -> float:
        counts = np.bincount(y[i], minlength=3)
        hits = np.bincount(y[i], weights=correct[i], minlength=3)
        return float((hits[counts > 0] / counts[counts > 0]).mean())

    return stat


def _ece_of(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> Stat:
    which = np.minimum((np.clip(conf, 0, 1) * bins).astype(int), bins - 1)

    def stat(i: np.ndarray) -> float:  # sum_b n_b / n |mean conf_b - hit rate_b|
        gap = np.bincount(which[i], weights=conf[i] - correct[i], minlength=bins)
        return float(np.abs(gap).sum() / len(i))

    return stat


def _nll(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-7, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return np.asarray(-np.log(p[np.arange(len(y)), y]))


def _hits(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    agree = np.sign(pred) * np.sign(real)
    return np.where(agree == 0, 0.5, agree > 0).astype(np.float64)


def _comparison(scored: Mapping[str, Mapping[str, Scored]], metric: str) -> dict[str, Any]:
    """The network against every other model on ``metric``: values, beat, differences."""
    higher = metric not in LOWER_IS_BETTER
    net = scored["network"][metric]
    others = {k: v[metric] for k, v in scored.items() if k != "network"}
    beat = {
        k: bool(net.value > o.value if higher else net.value < o.value) for k, o in others.items()
    }
    return {
        "metric": metric,
        "network": _num(net.value),
        "baselines": {k: _num(o.value) for k, o in others.items()},
        "beat": beat,
        "beat_all": all(beat.values()),
        "difference": {k: difference(net, o, higher) for k, o in others.items()},
    }


def _head(
    entries: Mapping[str, Any],
    stats: Stats,
    resamples: Sequence[np.ndarray],
    full: np.ndarray,
    naive: str,
    compared: Sequence[str],
) -> dict[str, Any]:
    """Score every model in ``entries`` on every stat; compare the network with the rest."""
    scored = {
        name: {m: score(prepare(p), resamples, full) for m, prepare in stats.items()}
        for name, p in entries.items()
    }
    return {
        "naive": naive,
        "n": int(len(full)),
        "models": {k: {m: sc.summary() for m, sc in v.items()} for k, v in scored.items()},
        "comparison": [_comparison(scored, m) for m in compared],
    }


def direction_head(
    models: Mapping[str, Prediction], truth: Truth, boot: BlockBootstrap
) -> dict[str, Any]:
    y = truth.direction.astype(int)
    entries = {
        "network": models["network"]["direction"],
        "majority": np.tile(truth.prior, (len(y), 1)),
        **{DIRECTION_NAMES[k]: p["direction"] for k, p in models.items() if k != "network"},
    }
    stats: Stats = {
        "accuracy": lambda p: _mean_of((p.argmax(axis=1) == y).astype(np.float64)),
        "balanced_accuracy": lambda p: _balanced_of(y, (p.argmax(axis=1) == y).astype(float)),
        "logloss": lambda p: _mean_of(_nll(y, p)),
    }
    full = np.arange(len(y))
    out = _head(entries, stats, boot.resamples(1), full, "majority", COMPARED["direction"])
    return {**out, **boot.blocking(1)}


def price_head(
    models: Mapping[str, Prediction], truth: Truth, boot: BlockBootstrap, k: int, h: int
) -> dict[str, Any]:
    real = truth.returns[h]
    ranked = rankdata(real)
    entries = {
        "network": models["network"]["price"][:, k],
        "mean": np.full(len(real), truth.mean_returns[h]),
        **{PRICE_NAMES[n]: p["price"][:, k] for n, p in models.items() if n != "network"},
    }
    stats: Stats = {
        "ic": lambda p: _corr_of(p, real),
        "rank_ic": lambda p: _corr_of(rankdata(p), ranked),
        "hit_rate": lambda p: _mean_of(_hits(p, real)),
    }
    full = np.arange(len(real))
    out = _head(entries, stats, boot.resamples(h), full, "mean", COMPARED["price"])
    return {**out, **boot.blocking(h)}


def volatility_head(
    pred: Prediction, truth: Truth, boot: BlockBootstrap, horizon: int = 24
) -> dict[str, Any]:
    real, ok = truth.volatility, np.isfinite(truth.trailing_volatility)
    ranked = np.full(len(real), np.nan)
    ranked[ok] = rankdata(real[ok])
    entries = {"network": pred["volatility"], "trailing": truth.trailing_volatility}

    def ranks(p: np.ndarray) -> np.ndarray:
        out = np.full(len(p), np.nan)
        out[ok] = rankdata(p[ok])
        return out

    stats: Stats = {
        "mae": lambda p: _mean_of(np.abs(p - real)),
        "rank_corr": lambda p: _corr_of(ranks(p), ranked),
    }
    resamples = [r[ok[r]] for r in boot.resamples(horizon)]
    full = np.flatnonzero(ok)
    out = _head(entries, stats, resamples, full, "trailing", COMPARED["volatility"])
    return {**out, **boot.blocking(horizon)}


def confidence_head(pred: Prediction, truth: Truth, boot: BlockBootstrap) -> dict[str, Any] | None:
    if truth.confidence_base_rate is None or "confidence" not in pred:
        return None
    correct = (pred["direction"].argmax(axis=1) == truth.direction).astype(np.float64)
    entries = {
        "network": pred["confidence"],
        "constant": np.full(len(correct), truth.confidence_base_rate),
    }
    stats: Stats = {
        "ece": lambda p: _ece_of(p, correct),
        "brier": lambda p: _mean_of((p - correct) ** 2),
    }
    full = np.arange(len(correct))
    out = _head(entries, stats, boot.resamples(1), full, "constant", COMPARED["confidence"])
    return {**out, **boot.blocking(1)}


def head_report(
    models: Mapping[str, Prediction],
    truth: Truth,
    times: pd.DatetimeIndex,
    *,
    reps: int = 500,
    seed: int = 0,
    split: str = "test",
) -> dict[str, Any]:
    """Every head of ``models["network"]`` beside its naive baseline and the other models
    (``linear`` and ``lightgbm``, for direction and price), with intervals, one comparison
    row per head and metric, and the edge (see the module docstring and :func:`edge`).
    ``split`` names what was scored; ``naive`` records the naive forecasts (:func:`naive_of`),
    so a later backtest of the model scores against the same ones."""
    boot = BlockBootstrap(times, reps=reps, seed=seed)
    net = models["network"]
    heads: dict[str, Any] = {"direction": direction_head(models, truth, boot)}
    for k, h in enumerate(sorted(truth.returns)):
        heads[f"price_{h}"] = price_head(models, truth, boot, k, h)
    if "volatility" in net:
        heads["volatility"] = volatility_head(net, truth, boot)
    conf = confidence_head(net, truth, boot)
    if conf is not None:
        heads["confidence"] = conf
    return {
        "split": split,
        "n": int(len(truth.direction)),
        "dates": boot.n_dates,
        "bootstrap": {"method": BOOTSTRAP_METHOD, "reps": reps, "level": LEVEL, "seed": seed},
        "heads": heads,
        "comparison": [{"head": h, **row} for h, rep in heads.items() for row in rep["comparison"]],
        "edge": edge(heads),
        "naive": naive_of(truth),
    }


def naive_of(truth: Truth) -> dict[str, Any]:
    """The naive forecasts of ``truth`` as plain values: the class ``prior``, the
    ``mean_returns`` per horizon (keys as strings) and the ``confidence_base_rate``."""
    return {
        "prior": [float(p) for p in truth.prior],
        "mean_returns": {str(h): float(m) for h, m in truth.mean_returns.items()},
        "confidence_base_rate": truth.confidence_base_rate,
    }


MIN_BLOCKS = 20  # test dates / block length below which a head is not judged for an edge


def _judged(heads: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The direction and price heads whose test split holds at least ``MIN_BLOCKS`` blocks
    (their intervals are trusted for an edge), and those that hold fewer."""
    ours = [h for h in heads if h == "direction" or h.startswith("price_")]
    enough = [h for h in ours if heads[h].get("blocks", MIN_BLOCKS) >= MIN_BLOCKS]
    return enough, [h for h in ours if h not in enough]


def _edge_candidates(heads: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The network's direction and price metrics with their naive values and intervals."""
    out = []
    for head in _judged(heads)[0]:
        report = heads[head]
        naive = report["naive"]
        for metric, m in report["models"]["network"].items():
            base = report["models"][naive][metric]["value"]
            lower = metric in LOWER_IS_BETTER
            out.append(
                {"head": head, "metric": metric, "naive": naive, "naive_value": base, **m,
                 "lower_is_better": lower}
            )  # fmt: skip
    return out


def edge(heads: Mapping[str, Any]) -> dict[str, Any]:
    """Which of the network's direction and price metrics clear their naive baseline
    (volatility and confidence are skills, not an edge on returns).

    A metric's margin over the naive value is measured in standard errors (the 95 %
    interval's half-width / 1.96): ``z``. It clears when ``z`` exceeds the one-sided 97.5 %
    normal quantile Bonferroni-adjusted for the number of metrics looked at (2.87 for 12),
    so looking at a dozen metrics of a signal-free model claims an edge about 5 % of the
    time, not 25 %. ``lead`` is the clearing metric with the largest ``z``; ``summary``
    says it with its 95 % interval, or "no edge" and the closest metric."""
    from scipy.stats import norm

    scored = []
    for c in _edge_candidates(heads):
        if c["lo"] is None or c["naive_value"] is None or c["value"] is None:
            continue
        sign = -1.0 if c["lower_is_better"] else 1.0
        se = max((c["hi"] - c["lo"]) / (2 * 1.96), 1e-12)
        scored.append({**c, "z": round(sign * (c["value"] - c["naive_value"]) / se, 3)})
    z_crit = float(norm.ppf(1 - (1 - LEVEL) / 2 / max(len(scored), 1)))
    clear = [c for c in scored if c["z"] > z_crit]
    lead = max(clear, key=lambda c: c["z"]) if clear else None
    closest = max(scored, key=lambda c: c["z"]) if scored else None
    skipped = _judged(heads)[1]
    summary = edge_summary(lead, len(clear), closest)
    if skipped:
        names = ", ".join(f"{head_label(h)} ({heads[h]['blocks']:.0f})" for h in skipped)
        summary += f"; not judged, under {MIN_BLOCKS} blocks of dates: {names}"
    return {
        "lead": lead,
        "edges": [f"{c['head']}.{c['metric']}" for c in clear],
        "not_judged": skipped,
        "z_critical": round(z_crit, 3),
        "summary": summary,
    }


def edge_summary(
    lead: Mapping[str, Any] | None, n_clear: int, closest: Mapping[str, Any] | None
) -> str:
    """The report's first line: the leading edge and its interval, or "no edge"."""
    if lead is not None:
        more = f"; {n_clear - 1} more clear their naive baseline" if n_clear > 1 else ""
        return f"edge: {describe(lead)}{more}"
    if closest is None:
        return "no edge: too few test dates for intervals"
    return (
        "no edge: no direction or price metric clears its naive baseline "
        f"(closest: {describe(closest)}, z {closest['z']:.1f})"
    )


METRIC_LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "logloss": "log-loss",
    "ic": "IC",
    "rank_ic": "rank IC",
    "hit_rate": "hit rate",
    "mae": "MAE",
    "rank_corr": "rank corr",
    "ece": "ECE",
    "brier": "Brier",
}


def head_label(head: str) -> str:
    """``price_4`` -> ``price 4-bar``."""
    return f"price {head.split('_')[1]}-bar" if head.startswith("price_") else head


def describe(c: Mapping[str, Any]) -> str:
    """E.g. ``price 1-bar rank IC +0.271 [+0.201, +0.334] vs +0.000 (mean)``."""
    m = c["metric"]
    return (
        f"{head_label(c['head'])} {METRIC_LABELS.get(m, m)} {fmt(m, c['value'])} "
        f"[{fmt(m, c['lo'])}, {fmt(m, c['hi'])}] vs {fmt(m, c['naive_value'])} ({c['naive']})"
    )


def fmt(metric: str, x: float | None) -> str:
    """A metric's value for display: signed for correlations, 3 significant digits for MAE."""
    if x is None:
        return "-"
    if metric in ("ic", "rank_ic", "rank_corr"):
        return f"{x:+.3f}"
    return f"{x:.3g}" if metric == "mae" else f"{x:.3f}"
