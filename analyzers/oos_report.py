"""The out-of-sample report of a model backtest: the signals the strategy acted on, per head,
against what the stored bars realised and the model's naive baselines.

It is :func:`mlmodels.head_metrics.head_report`, the report training writes for its test
split, over the backtest's decisions instead:

* the predictions: every decision of the audit trail (``strategies.audit.decisions_frame``)
  that had a signal, one per symbol and bar, its heads as they were served;
* the truth: the labels of the decision bar (:func:`mlmodels.labels.make_labels` with the
  model's label definitions) on each symbol's stored bars up to the backtest's last bar, so
  nothing after the backtest is read; decisions whose labels need bars beyond it are left out;
* the naive forecasts the model was trained against: the training split's class prior and
  mean return per horizon and the validation split's hit rate of the direction calls (the
  card's report records them as ``naive``; for a card written before that, the same
  statistics of the labels over the card's training range on the backtest's bars, and the
  card's validation direction accuracy). The volatility head's naive forecast is the trailing
  realised volatility, the volatility label ``risk_horizon`` bars earlier
  (``std(g_{t-23..t})``, known at ``t``), as training's
  :func:`mlmodels.baselines.trailing_volatility`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.errors import DataError
from mlmodels.head_metrics import Truth, head_report
from mlmodels.labels import LabelConfig, make_labels
from strategies.audit import decisions_frame

if TYPE_CHECKING:
    from mlmodels.registry import ModelCard

DIRECTION = ["p_down", "p_flat", "p_up"]


def _utc(x: Any) -> pd.Series:
    return pd.Series(pd.to_datetime(x, utc=True)).astype("datetime64[ns, UTC]")


def signal_rows(decisions: pd.DataFrame, horizons: Sequence[int]) -> pd.DataFrame:
    """The decisions that had a signal, the last one per symbol and bar: ``symbol``,
    ``timestamp`` and the heads (``p_down, p_flat, p_up``, ``ret_{h}``, ``volatility``,
    ``confidence``)."""
    cols = ["symbol", "timestamp", *DIRECTION, *(f"ret_{h}" for h in horizons)]
    cols += ["volatility", "confidence"]
    if "p_up" not in decisions:
        return pd.DataFrame(columns=cols)
    d = decisions.loc[decisions["p_up"].notna(), cols].copy()
    d["timestamp"] = _utc(d["timestamp"]).to_numpy()
    return d.drop_duplicates(["symbol", "timestamp"], keep="last").reset_index(drop=True)


def realised_labels(
    frames: Mapping[str, pd.DataFrame], labels: LabelConfig, until: pd.Timestamp
) -> pd.DataFrame:
    """Each symbol's labels on its bars up to ``until``, long (``symbol``, ``timestamp``, a
    ``real_`` column per label), with ``real_trailing_volatility``."""
    parts = []
    for sym, frame in frames.items():
        lab = make_labels(frame.loc[:until], labels)
        lab["trailing_volatility"] = lab["volatility"].shift(labels.risk_horizon)
        lab = lab.add_prefix("real_").assign(symbol=sym)
        lab["timestamp"] = _utc(lab.index).to_numpy()
        parts.append(lab.reset_index(drop=True))
    return pd.concat(parts, ignore_index=True)


def naive_forecasts(
    card: ModelCard, labels: pd.DataFrame
) -> tuple[np.ndarray, dict[int, float], float | None, str]:
    """The class prior, the mean return per horizon, the confidence's base rate, and where
    they come from (the module docstring)."""
    recorded = (card.report or {}).get("naive")
    if recorded:
        means = {int(h): float(m) for h, m in recorded["mean_returns"].items()}
        return np.asarray(recorded["prior"], float), means, recorded["confidence_base_rate"], "card"
    train = card.date_ranges.get("train")
    if not train:
        raise DataError(
            f"{card.ref}'s card records neither its naive forecasts nor its training range"
        )
    t = labels["timestamp"]
    rows = labels[(t >= pd.Timestamp(train[0])) & (t <= pd.Timestamp(train[1]))]
    rows = rows[rows["real_direction"].notna()]
    if rows.empty:
        raise DataError(f"no labelled bar in {card.ref}'s training range to take the prior from")
    prior = np.bincount(rows["real_direction"].astype(int), minlength=3) / len(rows)
    means = {int(h): float(rows[f"real_ret_{h}"].mean()) for h in card.horizons}
    val = card.metrics.get("val")
    rate = val.get("direction_accuracy") if isinstance(val, Mapping) else None
    return prior, means, rate, "stored bars over the training range"


def backtest_report(
    decisions: pd.DataFrame,
    frames: Mapping[str, pd.DataFrame],
    card: ModelCard,
    *,
    reps: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`mlmodels.head_metrics.head_report` of the backtest's signals (``split``
    ``backtest``), with ``naive_from`` (``card``, or the stored bars over the training
    range) and ``range`` (the first and last bar scored). A backtest without a scored
    decision raises ``DataError``."""
    horizons = sorted(int(h) for h in card.horizons)
    sig = signal_rows(decisions, horizons)
    if sig.empty:
        raise DataError("no decision had a signal")
    until = sig["timestamp"].max()
    used = {s: frames[s] for s in sig["symbol"].unique()}
    labels = realised_labels(used, card.label_cfg(), until)
    prior, means, rate, source = naive_forecasts(card, labels)
    m = sig.merge(labels, on=["symbol", "timestamp"], how="inner")
    m = m[m["real_direction"].notna()].sort_values(["timestamp", "symbol"], kind="stable")
    if len(m) < 2:
        raise DataError(f"fewer than 2 decisions have labels within the backtest (to {until})")

    def col(name: str) -> np.ndarray:
        return np.asarray(m[name].to_numpy(dtype=np.float64))

    truth = Truth(
        direction=col("real_direction").astype(int),
        returns={h: col(f"real_ret_{h}") for h in horizons},
        mean_returns=means,
        volatility=col("real_volatility"),
        trailing_volatility=col("real_trailing_volatility"),
        prior=prior,
        confidence_base_rate=rate,
    )
    net = {
        "direction": m[DIRECTION].to_numpy(dtype=np.float64),
        "price": m[[f"ret_{h}" for h in horizons]].to_numpy(dtype=np.float64),
        "volatility": col("volatility"),
        "confidence": col("confidence"),
    }
    times = pd.DatetimeIndex(m["timestamp"])
    report = head_report({"network": net}, truth, times, reps=reps, seed=seed, split="backtest")
    span = [times.min().isoformat(), times.max().isoformat()]
    return {**report, "naive_from": source, "range": span}


def result_report(
    result: Any, frames: Mapping[str, pd.DataFrame], card: ModelCard, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """:func:`backtest_report` of a finished model backtest (``analyzers.backtest.BacktestResult``
    of the ML strategy, whose audit trail it reads); None, with a note to ``log``, when no
    decision can be scored."""
    try:
        decisions = decisions_frame(getattr(result.strategy, "audit", None) or [])
        return backtest_report(decisions, frames, card)
    except DataError as err:
        log(f"no out-of-sample report per head: {err}")
        return None
