"""analyzers.overfitting against the papers: the deflated Sharpe ratio's worked example and its
behaviour under the null, and the probability of backtest overfitting (CSCV) by hand.

Pure numpy and scipy; no backtest, no registry (tests/test_research_trials.py has those)."""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from analyzers.overfitting import (
    EULER_GAMMA,
    deflated_sharpe,
    expected_max_sharpe,
    probabilistic_sharpe,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)
from core.errors import ConfigError, DataError

Z = NormalDist()


# -- the deflated Sharpe ratio --------------------------------------------------------------------
def test_the_deflated_sharpe_papers_numerical_example() -> None:
    """Bailey and Lopez de Prado, "The Deflated Sharpe Ratio: Correcting for Selection Bias,
    Backtest Overfitting and Non-Normality", J. Portfolio Management 40(5), 2014, section
    "A numerical example": a strategist tried N = 100 configurations; the best has an
    annualised Sharpe ratio of 2.5 over 5 years of daily returns (T = 1250, 250 a year); the
    trials' annualised Sharpe ratios have variance 1/2; the returns' skewness is -3 and
    kurtosis 10. Per period: SR = 2.5 / sqrt(250) = 0.1581, V = 0.5 / 250,
    SR0 = sqrt(V) ((1 - gamma) Z^-1(1 - 1/100) + gamma Z^-1(1 - 1/(100 e))) = 0.1132, and
    DSR = Z((0.1581 - 0.1132) sqrt(1249) / sqrt(1 + 3 * 0.1581 + 9/4 * 0.1581^2)) = 0.9004:
    below 0.95, so not a discovery at that confidence although its PSR against 0 is ~1."""
    sr, t, g3, g4, n, v = 2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, 0.5 / 250
    # by hand, from the paper's formulas (statistics.NormalDist, not scipy)
    e_max = (1 - EULER_GAMMA) * Z.inv_cdf(1 - 1 / n) + EULER_GAMMA * Z.inv_cdf(1 - 1 / (n * math.e))
    sr0 = math.sqrt(v) * e_max
    dsr = Z.cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))
    assert (round(sr, 4), round(sr0, 4), round(dsr, 4)) == (0.1581, 0.1132, 0.9004)
    # the module
    assert expected_max_sharpe(n, v) == pytest.approx(sr0, rel=1e-12)
    assert expected_max_sharpe(n, v) * math.sqrt(250) == pytest.approx(1.7894, abs=1e-4)
    got = probabilistic_sharpe(sr, t, g3, g4, benchmark=expected_max_sharpe(n, v))
    assert got == pytest.approx(dsr, rel=1e-12) and round(got, 4) == 0.9004
    assert probabilistic_sharpe(sr, t, g3, g4) > 0.9999  # undeflated: looks certain


def test_deflated_sharpe_of_returns_uses_their_moments_and_the_given_variance() -> None:
    """The returns' own SR (ddof 1), skewness and (non-excess) kurtosis computed by hand."""
    r = np.random.default_rng(7).standard_t(4, 600) * 0.01 + 0.0006
    x = r - r.mean()
    sr = r.mean() / r.std(ddof=1)
    g3 = np.mean(x**3) / np.mean(x**2) ** 1.5
    g4 = np.mean(x**4) / np.mean(x**2) ** 2
    v, n = 0.5 / 252, 30
    sr0 = math.sqrt(v) * ((1 - EULER_GAMMA) * Z.inv_cdf(1 - 1 / n)
                          + EULER_GAMMA * Z.inv_cdf(1 - 1 / (n * math.e)))  # fmt: skip
    want = Z.cdf((sr - sr0) * math.sqrt(len(r) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))
    got = deflated_sharpe(pd.Series(r), n_trials=n, sharpe_variance=v)
    assert got["dsr"] == pytest.approx(want, rel=1e-10)
    assert (got["sharpe"], got["sr0"]) == pytest.approx((sr, sr0), rel=1e-12)
    assert (got["skew"], got["kurtosis"], got["sharpe_variance"]) == pytest.approx((g3, g4, v))
    assert sharpe_ratio(r) == pytest.approx(sr, rel=1e-12)
    assert sharpe_ratio(np.zeros(10)) == 0.0 and sharpe_ratio(np.full(5, 0.01)) == 0.0


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_expected_max_sharpe_approximates_the_expected_maximum_of_n_normals(n: int) -> None:
    """The paper's approximation of E[max of N standard normals], against the integral
    E[max] = int x N phi(x) Phi(x)^(N-1) dx: within 3 % (closer as N grows)."""
    exact, _ = integrate.quad(lambda x: x * n * Z.pdf(x) * Z.cdf(x) ** (n - 1), -10, 10)
    approx = expected_max_sharpe(n, 1.0)
    assert approx == pytest.approx(exact, rel=0.03)
    assert expected_max_sharpe(n, 4.0) == pytest.approx(2 * approx)  # scales with sqrt(V)
    assert expected_max_sharpe(1, 4.0) == 0.0
    with pytest.raises(ConfigError, match="n_trials must be >= 1"):
        expected_max_sharpe(0, 1.0)


def test_one_configuration_under_the_null_false_alarms_about_five_percent() -> None:
    """With one trial the DSR is the PSR against 0, close to uniform under the null: over 400
    seeds of 250 zero-mean returns it exceeds 0.95 about 5 % of the time."""
    dsr = np.array([
        deflated_sharpe(pd.Series(np.random.default_rng(seed).normal(0.0, 0.01, 250)))["dsr"]
        for seed in range(400)
    ])  # fmt: skip
    assert 0.01 <= (dsr > 0.95).mean() <= 0.12, (dsr > 0.95).mean()
    assert 0.4 <= dsr.mean() <= 0.6 and 0.15 <= (dsr < 0.25).mean() <= 0.35


def test_the_best_of_a_null_sweep_is_deflated() -> None:
    """20 unskilled configurations (zero-mean returns), 200 seeds: the best one's PSR against
    0 claims significance most of the time (selection bias); its deflated Sharpe ratio (N = 20,
    V their Sharpe ratios' variance) almost never does, and is centred near 0.5."""
    dsr, psr = [], []
    for seed in range(200):
        m = np.random.default_rng(1000 + seed).normal(0.0, 0.01, (500, 20))
        sharpes = m.mean(axis=0) / m.std(axis=0, ddof=1)
        best = pd.Series(m[:, int(np.argmax(sharpes))])
        dsr.append(deflated_sharpe(best, list(sharpes))["dsr"])
        psr.append(deflated_sharpe(best)["dsr"])
    d, p = np.array(dsr), np.array(psr)
    assert (p > 0.95).mean() > 0.4  # the naive reading: a "discovery" in 61 % of the sweeps
    assert (d > 0.95).mean() <= 0.02
    assert 0.35 <= np.median(d) <= 0.6 and np.median(p) > 0.9


# -- the probability of backtest overfitting ------------------------------------------------------
HAND = np.array([
    [3, 1, 3, 1, -1, 1, -1, 1],  # A: strong in the first half (blocks 0, 1), flat in the second
    [1, 0, 1, 0, 1, 0, 1, 0],  # B: the same modest result in every block
], dtype=float).T  # fmt: skip


def test_pbo_by_hand() -> None:
    """T = 8 rows, N = 2 trials, S = 4 blocks of 2 rows, C(4, 2) = 6 combinations.

    A's Sharpe ratio over two strong blocks [3, 1, 3, 1] is 2 / sqrt(4/3) = 1.732, over two
    flat ones [-1, 1, -1, 1] is 0, over one of each [3, 1, -1, 1] is 1 / sqrt(8/3) = 0.612;
    B's is 0.5 / sqrt(1/3) = 0.866 over any two blocks. In-sample blocks, then:
    (0,1): A wins in-sample, is worst out (0 < 0.866): rank 1, w = 1/3, logit -ln 2;
    (0,2), (0,3), (1,2), (1,3): B wins in and out: rank 2, w = 2/3, logit +ln 2;
    (2,3): B wins in-sample, A out (1.732): B ranks 1, logit -ln 2. PBO = 2/6 = 1/3."""
    got = probability_of_backtest_overfitting(HAND, n_partitions=4)
    ln2 = math.log(2)
    assert got.logits == pytest.approx([-ln2, ln2, ln2, ln2, ln2, -ln2], rel=1e-12)
    assert got.pbo == pytest.approx(1 / 3)
    a, b = math.sqrt(3), 0.5 * math.sqrt(3)
    assert got.is_sharpe == pytest.approx([a, b, b, b, b, b], rel=1e-12)
    assert got.oos_sharpe == pytest.approx([0.0, b, b, b, b, b], abs=1e-12)
    assert (got.n_combinations, got.n_partitions, got.n_trials, got.n_rows) == (6, 4, 2, 8)
    assert got.prob_oos_loss == 0.0


def pbo_reference(m: np.ndarray, s: int) -> tuple[float, np.ndarray]:
    """CSCV as the paper lists it, one combination at a time (rows trimmed from the start)."""
    m = m[len(m) % s :]
    blocks = np.split(m, s)
    logits = []
    for c in itertools.combinations(range(s), s // 2):
        train = np.vstack([blocks[i] for i in c])
        test = np.vstack([blocks[i] for i in range(s) if i not in c])
        r_is = train.mean(axis=0) / train.std(axis=0, ddof=1)
        r_oos = test.mean(axis=0) / test.std(axis=0, ddof=1)
        rank = stats.rankdata(r_oos)[int(np.argmax(r_is))]  # 1 = worst, ties averaged
        w = rank / (m.shape[1] + 1)
        logits.append(math.log(w / (1 - w)))
    lam = np.array(logits)
    return float((lam <= 0).mean()), lam


@pytest.mark.parametrize(("t", "n", "s"), [(203, 7, 6), (480, 12, 8), (64, 3, 2)])
def test_pbo_matches_the_combination_by_combination_reference(t: int, n: int, s: int) -> None:
    rng = np.random.default_rng(t)
    m = rng.normal(0.0003, 0.01, (t, n)) + rng.normal(0, 0.002, n)  # some skill differences
    want, logits = pbo_reference(m, s)
    got = probability_of_backtest_overfitting(m, s)
    assert got.pbo == want and got.logits == pytest.approx(logits, rel=1e-9, abs=1e-12)
    assert got.n_rows == t - t % s and got.n_combinations == math.comb(s, s // 2)
    frame = pd.DataFrame(m[:, ::-1])  # the trials' order does not matter
    assert probability_of_backtest_overfitting(frame, s).pbo == want


def test_pbo_of_the_papers_sixteen_blocks_and_of_skill_against_noise() -> None:
    """The paper's S = 16 gives C(16, 8) = 12870 combinations. 100 unskilled trials over 1000
    bars overfit about half the time; one with a true edge among them is rarely overfit."""
    noise = np.random.default_rng(1).normal(0.0, 0.01, (1000, 100))
    null = probability_of_backtest_overfitting(noise, 16)
    assert null.n_combinations == 12870 and 0.3 <= null.pbo <= 0.7
    skill = noise.copy()
    skill[:, 7] += 0.002  # an annualised Sharpe ratio of about 3
    got = probability_of_backtest_overfitting(skill, 16)
    assert got.pbo < 0.1 and got.prob_oos_loss < 0.1 < 0.3 < null.prob_oos_loss


def test_pbo_of_unskilled_trials_averages_one_half() -> None:
    pbo = [probability_of_backtest_overfitting(
               np.random.default_rng(seed).normal(0.0, 0.01, (400, 20)), 8).pbo
           for seed in range(20)]  # fmt: skip
    assert 0.35 <= float(np.mean(pbo)) <= 0.65


def test_a_flat_trial_scores_zero_and_bad_input_is_refused() -> None:
    m = np.random.default_rng(3).normal(0.0, 0.01, (40, 3))
    m[:, 1] = 0.0  # a model that never traded
    m[:, 2] = 0.001  # a constant return: no risk measured, scored 0 rather than infinity
    got = probability_of_backtest_overfitting(m, 4)
    assert np.isfinite(got.is_sharpe).all() and np.isfinite(got.logits).all()
    with pytest.raises(ConfigError, match="even number"):
        probability_of_backtest_overfitting(m, 5)
    with pytest.raises(ConfigError, match="N >= 2 trials"):
        probability_of_backtest_overfitting(m[:, :1], 4)
    with pytest.raises(DataError, match="too few for 16 blocks"):
        probability_of_backtest_overfitting(m[:10], 16)
    bad = m.copy()
    bad[5, 0] = np.nan
    with pytest.raises(DataError, match="1 returns are NaN or infinite"):
        probability_of_backtest_overfitting(bad, 4)
