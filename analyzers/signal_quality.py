"""How good were the model's signals? Measured on the audit trail against realised prices.

For each decision at bar ``t`` with close ``p_t`` and each horizon ``h`` (bars), the realised
log return is ``g = log(p_{t+h} / p_t)`` along the same symbol's decision prices; decisions
whose horizon runs past the data end, and decisions without a signal, are left out.

* hit rate(h) = share of decisions with ``sign(predicted ret_h) == sign(g)`` (``g != 0``);
* IC(h) = Spearman rank correlation of predicted ``ret_h`` and ``g``;
* calibration: confidence in buckets; per bucket the mean confidence and the realised hit rate of
  the direction call (``argmax(p_down, p_up)`` against ``g`` at the label horizon, default 4);
* P&L by confidence bucket: mean of ``sign(target) * g`` over decisions that held a position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

BUCKETS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class SignalQuality:
    """The tables (``DataFrame``) of the module docstring."""

    by_horizon: pd.DataFrame
    calibration: pd.DataFrame
    pnl_by_confidence: pd.DataFrame


def realised(decisions: pd.DataFrame, horizons: Sequence[int]) -> pd.DataFrame:
    """``decisions`` with ``g_{h}`` (forward log return at each horizon) per symbol."""
    parts = []
    for _, d in decisions.sort_values("timestamp").groupby("symbol", sort=False):
        d = d.copy()
        logp = np.log(d["price"].to_numpy(dtype=float))
        for h in horizons:
            g = np.full(len(d), np.nan)
            if len(d) > h:
                g[:-h] = logp[h:] - logp[:-h]
            d[f"g_{h}"] = g
        parts.append(d)
    return pd.concat(parts) if parts else decisions.assign(**{f"g_{h}": [] for h in horizons})


def signal_quality(
    decisions: pd.DataFrame, horizons: Sequence[int] = (1, 4, 24), label_horizon: int = 4
) -> SignalQuality:
    """The three tables for ``strategies.audit.decisions_frame(...)`` output."""
    d = realised(decisions, horizons)
    d = d[d["p_up"].notna()] if "p_up" in d else d.iloc[0:0]
    rows = []
    for h in horizons:
        col = f"ret_{h}"
        m = d[[col, f"g_{h}"]].dropna() if col in d else pd.DataFrame()
        m = m[m[f"g_{h}"] != 0] if len(m) else m
        n = len(m)
        hit = float((np.sign(m[col]) == np.sign(m[f"g_{h}"])).mean()) if n else np.nan
        ic = float(spearmanr(m[col], m[f"g_{h}"]).statistic) if n > 2 else np.nan
        rows.append({"horizon": h, "n": n, "hit_rate": hit, "ic": ic})
    by_h = pd.DataFrame(rows).set_index("horizon")
    g = d[f"g_{label_horizon}"] if len(d) else pd.Series(dtype=float)
    ok = d[g.notna()] if len(d) else d
    bucket = pd.cut(ok["confidence"], BUCKETS, include_lowest=True) if len(ok) else None
    if len(ok):
        call = np.where(ok["p_up"] >= ok["p_down"], 1.0, -1.0)
        hit = pd.Series(call == np.sign(ok[f"g_{label_horizon}"]), index=ok.index)
        calib = (
            ok.assign(hit=hit)
            .groupby(bucket, observed=True)
            .agg(
                n=("hit", "size"), mean_confidence=("confidence", "mean"), hit_rate=("hit", "mean")
            )
        )
        held = ok[ok["target"] != 0]
        pnl = (
            (np.sign(held["target"]) * held[f"g_{label_horizon}"])
            .groupby(pd.cut(held["confidence"], BUCKETS, include_lowest=True), observed=True)
            .agg(["size", "mean"])
            .rename(columns={"size": "n", "mean": "mean_log_return"})
        )
    else:
        calib = pd.DataFrame(columns=["n", "mean_confidence", "hit_rate"])
        pnl = pd.DataFrame(columns=["n", "mean_log_return"])
    calib.index = calib.index.astype(str)
    pnl.index = pnl.index.astype(str)
    return SignalQuality(by_h, calib, pnl)


class SignalQualityAnalyzer(bt.Analyzer):  # type: ignore[misc]
    """Signal quality of the strategy's audit trail (``self.strategy.audit``), at the end."""

    params = (("horizons", (1, 4, 24)), ("label_horizon", 4))

    def stop(self) -> None:
        from strategies.audit import decisions_frame

        audit = getattr(self.strategy, "audit", None)
        if audit is None:
            raise TypeError(
                f"{type(self.strategy).__name__} keeps no audit trail (an 'audit' list of "
                "Decision); SignalQualityAnalyzer needs MLSignalStrategy or a subclass"
            )
        self.quality = signal_quality(decisions_frame(audit), self.p.horizons, self.p.label_horizon)

    def get_analysis(self) -> SignalQuality:
        return self.quality
