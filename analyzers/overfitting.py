"""Selection bias: the probabilistic and deflated Sharpe ratios, and the probability of
backtest overfitting.

Sharpe ratios here are per period (mean over standard deviation with ddof 1, risk-free rate
0); divide an annualised one by ``sqrt(periods a year)`` first. With ``T`` returns of
skewness ``g3`` and (non-excess) kurtosis ``g4`` (3 for a normal), ``Z`` the standard normal
CDF and ``gamma`` the Euler-Mascheroni constant:

* PSR (Bailey and Lopez de Prado, 2012), the probability that the true Sharpe ratio exceeds
  a benchmark ``SR*``::

      PSR(SR*) = Z((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))

* the Sharpe ratio the best of ``N`` unskilled trials reaches by luck, their Sharpe ratios
  having variance ``V`` (Bailey and Lopez de Prado, 2014)::

      SR0 = sqrt(V) ((1 - gamma) Z^-1(1 - 1/N) + gamma Z^-1(1 - 1/(N e)))

* DSR = PSR(SR0): the deflated Sharpe ratio; with one trial ``SR0 = 0`` and it is the PSR
  against zero. ``N`` counts configurations tried, not the folds of one walk-forward.

* PBO (Bailey, Borwein, Lopez de Prado and Zhu, 2015), by combinatorially symmetric cross-
  validation over a ``T x N`` matrix of the ``N`` trials' returns: cut the rows into ``S``
  (even) blocks in time order; for each of the ``C(S, S/2)`` ways to pick half the blocks as
  in-sample (the rest out-of-sample) take the trial with the best in-sample Sharpe ratio,
  its out-of-sample rank ``r`` among the ``N`` (1 the worst, ties averaged), ``w = r/(N+1)``
  and the logit ``l = ln(w / (1 - w))``. PBO is the share of combinations with ``l <= 0``:
  how often the in-sample winner does no better than the median out of sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import ConfigError, DataError

EULER_GAMMA = 0.5772156649015329


def sharpe_ratio(returns: pd.Series | np.ndarray) -> float:
    """Per-period Sharpe ratio (ddof 1); 0 when flat, constant or shorter than 2."""
    r = np.asarray(returns, dtype=float)
    r = r[~np.isnan(r)]
    sd = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    flat = sd <= 1e-10 * float(np.abs(r).max(initial=0.0))  # constant up to rounding
    return 0.0 if flat else float(r.mean()) / sd


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """``SR0``: the Sharpe ratio the best of ``n_trials`` unskilled trials is expected to reach
    when their Sharpe ratios have variance ``variance``; 0 for one trial."""
    from scipy.stats import norm

    if n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {n_trials}")
    if not variance >= 0:
        raise ConfigError(f"the trials' Sharpe variance must be >= 0, got {variance}")
    if n_trials == 1:
        return 0.0
    z = (1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials)
    z += EULER_GAMMA * norm.ppf(1 - 1 / (n_trials * math.e))
    return math.sqrt(variance) * float(z)


def probabilistic_sharpe(
    sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0, benchmark: float = 0.0
) -> float:
    """PSR: the probability that the true per-period Sharpe ratio exceeds ``benchmark`` given
    ``sharpe`` measured over ``n_obs`` returns of this skewness and (non-excess) kurtosis."""
    from scipy.stats import norm

    if n_obs < 2:
        raise ConfigError(f"the PSR needs at least 2 returns, got {n_obs}")
    var = max(1e-12, 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2)
    return float(norm.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var)))


def deflated_sharpe(
    returns: pd.Series,
    trial_sharpes: Sequence[float] = (),
    n_trials: int | None = None,
    *,
    sharpe_variance: float | None = None,
) -> dict[str, float]:
    """The deflated Sharpe ratio of per-period ``returns`` (see the module docstring).

    ``N`` is ``n_trials`` (default: the number of ``trial_sharpes``, at least 1); ``V`` is
    ``sharpe_variance`` or the variance (ddof 1) of the finite per-period ``trial_sharpes``,
    of which ``N > 1`` then needs two. Returns ``sharpe``, ``sr0``, ``dsr``, ``trials``,
    ``periods``, ``sharpe_variance``, ``skew`` and ``kurtosis``. Fewer than 3 returns, or
    constant ones, give a DSR of 0 (no evidence) rather than NaN.
    """
    from scipy.stats import kurtosis, skew

    r = returns.dropna().to_numpy(dtype=float)
    if not np.isfinite(r).all():
        raise DataError(f"deflated_sharpe: {int((~np.isfinite(r)).sum())} infinite returns")
    n = max(1, len(trial_sharpes)) if n_trials is None else n_trials
    if n < 1:
        raise ConfigError(f"deflated_sharpe: n_trials must be >= 1, got {n}")
    v = _trials_variance(trial_sharpes, n) if sharpe_variance is None else sharpe_variance
    t = len(r)
    out = {"sharpe": 0.0, "sr0": 0.0, "dsr": 0.0, "trials": float(n), "periods": float(t),
           "sharpe_variance": float(v), "skew": 0.0, "kurtosis": 3.0}  # fmt: skip
    sd = float(r.std(ddof=1)) if t > 1 else 0.0
    if t < 3 or sd <= 1e-10 * float(np.abs(r).max()):  # constant up to rounding
        return out
    sr = float(r.mean()) / sd
    out["sr0"] = expected_max_sharpe(n, v)
    out["skew"], out["kurtosis"] = float(skew(r)), float(kurtosis(r, fisher=False))
    out["dsr"] = probabilistic_sharpe(sr, t, out["skew"], out["kurtosis"], out["sr0"])
    out["sharpe"] = sr
    return out


def _trials_variance(trial_sharpes: Sequence[float], n: int) -> float:
    trials = np.asarray(trial_sharpes, dtype=float)
    trials = trials[np.isfinite(trials)]
    if n > 1 and len(trials) < 2:
        raise ConfigError(
            f"deflated_sharpe: {n} trials need the Sharpe ratios of at least 2 of them to "
            f"estimate their variance, got {len(trials)} finite ones"
        )
    return float(np.var(trials, ddof=1)) if len(trials) > 1 else 0.0


@dataclass(frozen=True)
class PBOResult:
    """CSCV's outcome: ``pbo``, and per combination of in-sample blocks the logit of the
    in-sample winner's out-of-sample rank and its per-period Sharpe ratio in and out of
    sample."""

    pbo: float
    logits: np.ndarray
    is_sharpe: np.ndarray
    oos_sharpe: np.ndarray
    n_partitions: int
    n_trials: int
    n_rows: int

    @property
    def n_combinations(self) -> int:
        return len(self.logits)

    @property
    def prob_oos_loss(self) -> float:
        """The share of combinations whose in-sample winner loses out of sample (Sharpe < 0)."""
        return float((self.oos_sharpe < 0).mean())


def probability_of_backtest_overfitting(
    returns: pd.DataFrame | np.ndarray, n_partitions: int = 16
) -> PBOResult:
    """PBO of selecting the best of the columns (trials) of ``returns`` (rows: periods in time
    order), by CSCV over ``n_partitions`` equal blocks (see the module docstring). The
    oldest ``T mod S`` rows are left out so that the blocks are equal."""
    m = np.asarray(returns, dtype=float)
    s = n_partitions
    if m.ndim != 2 or m.shape[1] < 2:
        raise ConfigError(f"PBO needs a T x N matrix of N >= 2 trials' returns, got {m.shape}")
    if s < 2 or s % 2:
        raise ConfigError(f"n_partitions must be an even number >= 2, got {s}")
    rows = m.shape[0] // s
    if rows < 1 or rows * s // 2 < 2:
        raise DataError(f"PBO: {m.shape[0]} rows are too few for {s} blocks of 2 rows or more")
    if not np.isfinite(m).all():
        raise DataError(f"PBO: {int((~np.isfinite(m)).sum())} returns are NaN or infinite")
    m = m[m.shape[0] - rows * s :]
    is_sr, oos_sr = _cscv_sharpes(m, s)
    best = np.argmax(is_sr, axis=1)
    pick = np.arange(len(best))
    chosen = oos_sr[pick, best][:, None]
    rank = 1 + (oos_sr < chosen).sum(axis=1) + 0.5 * ((oos_sr == chosen).sum(axis=1) - 1)
    w = rank / (m.shape[1] + 1)
    logits = np.log(w / (1 - w))
    return PBOResult(float((logits <= 0).mean()), logits, is_sr[pick, best], chosen[:, 0],
                     s, m.shape[1], m.shape[0])  # fmt: skip


def _cscv_sharpes(m: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Per combination (rows) and trial (columns): the per-period Sharpe ratio over the
    in-sample blocks and over the others, from per-block sums of the centred returns."""
    centre = m.mean(axis=0)
    x = (m - centre).reshape(s, -1, m.shape[1])
    sums, squares = x.sum(axis=1), (x**2).sum(axis=1)
    combos = np.zeros((math.comb(s, s // 2), s))
    for i, c in enumerate(itertools.combinations(range(s), s // 2)):
        combos[i, list(c)] = 1.0
    n = x.shape[1] * s // 2  # rows in either half
    out = []
    for pick in (combos, 1.0 - combos):
        mean = pick @ sums / n
        var = (pick @ squares - n * mean**2) / (n - 1)
        sd = np.sqrt(np.maximum(var, 0.0))
        ok = sd > 1e-10 * np.abs(m).max(axis=0)  # a flat trial scores 0
        out.append(np.where(ok, (mean + centre) / np.where(ok, sd, 1.0), 0.0))
    return out[0], out[1]
