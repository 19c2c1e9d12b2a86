"""The feature registry: the single source of truth for names, order, formulas and warm-ups.

A *kind* is one calculator with its family, name and formula templates and its warm-up rule;
``LAYOUT`` lists the ``(kind, window)`` pairs in output order; ``FEATURES`` is built from both.
Adding a feature with an existing calculator is one line in ``LAYOUT``.

Warm-up rules (bars before the first value; the value is NaN there):

* a rolling window of ``n`` bars: ``n - 1`` (``n`` when it needs a previous close too);
* Wilder averages seeded with an ``n``-bar mean (ATR, ADX), as ta and Wilder define them: from the
  seed (ADX smooths twice: ``2n - 1``);
* EMAs seeded with a single value (EMA, MACD, RSI) are held back until the seed's weight
  ``(1 - alpha)^k`` falls below ``SETTLE_TOL`` (1 %); chained EMAs add their settling times.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mlmodels.features import _flow as fl
from mlmodels.features import _oscillators as osc
from mlmodels.features import _price as pr
from mlmodels.features._bars import Array, Bars

SETTLE_TOL = 0.01

Calc = Callable[[Bars, int], Array]


def settle(alpha: float) -> int:
    """Bars until a single-value seed's weight ``(1 - alpha)^k`` is below ``SETTLE_TOL``."""
    return math.ceil(math.log(SETTLE_TOL) / math.log(1.0 - alpha))


def ema_settle(span: int) -> int:
    """Settling bars of an EMA with ``alpha = 2 / (span + 1)``."""
    return settle(2.0 / (span + 1.0))


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """One output column: its name, family, formula, main window and warm-up.

    ``warmup`` is the number of bars before the first value; ``ta`` names the ta indicator the
    value is tested against ("" when ta has no equivalent); ``kind`` selects the calculator.
    """

    name: str
    family: str
    formula: str
    window: int
    warmup: int
    ta: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class Kind:
    """A calculator and the templates (``{n}`` is the window) that describe its features."""

    family: str
    calc: Calc
    name: str
    formula: str
    warmup: Callable[[int], int]
    ta: str = ""


def _k(
    family: str, calc: Calc, name: str, formula: str, warmup: Callable[[int], int], ta: str = ""
) -> Kind:
    return Kind(family=family, calc=calc, name=name, formula=formula, warmup=warmup, ta=ta)


def _same(n: int) -> int:
    return n


def _window(n: int) -> int:
    return n - 1


def _zero(n: int) -> int:
    return 0


_MACD_LINE = ema_settle(pr.MACD_SLOW)
_MACD_SIGNAL = _MACD_LINE + ema_settle(pr.MACD_SIGNAL)
_MACD_TA = "MACD(close, 26, 12, 9)"
_BB_TA = "BollingerBands(close, {n}, 2)"
_KC_TA = "KeltnerChannel(h, l, c, {n}, original_version=True)"
_DC_TA = "DonchianChannel(h, l, c, {n})"
_STOCH_TA = "StochasticOscillator(h, l, c, {n}, 3)"
_ADX_TA = "ADXIndicator(h, l, c, {n})"

KINDS: dict[str, Kind] = {
    "ret": _k(
        "returns",
        pr.ret,
        "ret_{n}",
        "close / close[t-{n}] - 1",
        _same,
        "ROCIndicator(close, {n}) / 100",
    ),
    "log_ret": _k(
        "returns",
        pr.log_ret,
        "log_ret_{n}",
        "ln(close / close[t-{n}])",
        _same,
        "DailyLogReturnIndicator / 100",
    ),
    "gap": _k("returns", pr.gap, "gap", "open / close[t-1] - 1", _same),
    "sma_rel": _k(
        "trend",
        pr.sma_rel,
        "sma_{n}_rel",
        "close / SMA(close, {n}) - 1",
        _window,
        "close / SMAIndicator(close, {n}) - 1",
    ),
    "ema_rel": _k(
        "trend",
        pr.ema_rel,
        "ema_{n}_rel",
        "close / EMA(close, {n}) - 1; EMA alpha 2/({n}+1), seeded with the first close",
        ema_settle,
        "close / EMAIndicator(close, {n}) - 1",
    ),
    "macd": _k(
        "trend",
        pr.macd_norm,
        "macd_norm",
        "(EMA(close, 12) - EMA(close, 26)) / close",
        lambda n: _MACD_LINE,
        _MACD_TA + ".macd() / close",
    ),
    "macd_signal": _k(
        "trend",
        pr.macd_signal_norm,
        "macd_signal_norm",
        "EMA(MACD line, 9) / close",
        lambda n: _MACD_SIGNAL,
        _MACD_TA + ".macd_signal() / close",
    ),
    "macd_hist": _k(
        "trend",
        pr.macd_hist_norm,
        "macd_hist_norm",
        "(MACD line - signal) / close",
        lambda n: _MACD_SIGNAL,
        _MACD_TA + ".macd_diff() / close",
    ),
    "adx": _k(
        "trend",
        pr.adx,
        "adx_{n}",
        "Wilder({n}) mean of DX = 100 abs(+DI - -DI) / (+DI + -DI), 0..100",
        lambda n: 2 * n - 1,
        _ADX_TA + ".adx()",
    ),
    "adx_pos": _k(
        "trend",
        pr.adx_pos,
        "adx_pos_{n}",
        "+DI = 100 Wilder({n})(+DM) / Wilder({n})(TR), 0..100",
        _same,
        _ADX_TA + ".adx_pos()",
    ),
    "adx_neg": _k(
        "trend",
        pr.adx_neg,
        "adx_neg_{n}",
        "-DI = 100 Wilder({n})(-DM) / Wilder({n})(TR), 0..100",
        _same,
        _ADX_TA + ".adx_neg()",
    ),
    "aroon_up": _k(
        "trend",
        pr.aroon_up,
        "aroon_up_{n}",
        "100 ({n} - bars since the highest high of {n}+1 bars) / {n}",
        _same,
        "AroonIndicator(h, l, {n}).aroon_up()",
    ),
    "aroon_down": _k(
        "trend",
        pr.aroon_down,
        "aroon_down_{n}",
        "100 ({n} - bars since the lowest low of {n}+1 bars) / {n}",
        _same,
        "AroonIndicator(h, l, {n}).aroon_down()",
    ),
    "rsi": _k(
        "momentum",
        osc.rsi,
        "rsi_{n}",
        "100 - 100 / (1 + Wilder({n}) up / Wilder({n}) down), 0..100",
        lambda n: settle(1.0 / n),
        "RSIIndicator(close, {n})",
    ),
    "stoch_k": _k(
        "momentum",
        osc.stoch_k,
        "stoch_k_{n}",
        "100 (close - LL{n}) / (HH{n} - LL{n}); 50 if HH = LL",
        _window,
        _STOCH_TA + ".stoch()",
    ),
    "stoch_d": _k(
        "momentum",
        osc.stoch_d,
        "stoch_d_{n}",
        "SMA(stoch_k_{n}, 3)",
        lambda n: n + 1,
        _STOCH_TA + ".stoch_signal()",
    ),
    "williams_r": _k(
        "momentum",
        osc.williams_r,
        "williams_r_{n}",
        "-100 (HH{n} - close) / (HH{n} - LL{n}); -50 if HH = LL",
        _window,
        "WilliamsRIndicator(h, l, c, {n})",
    ),
    "roc": _k(
        "momentum",
        osc.roc,
        "roc_{n}",
        "100 (close - close[t-{n}]) / close[t-{n}]",
        _same,
        "ROCIndicator(close, {n})",
    ),
    "atr_norm": _k(
        "volatility",
        osc.atr_norm,
        "atr_{n}_norm",
        "ATR({n}) / close; Wilder, seeded with the mean of the first {n} TR",
        _window,
        "AverageTrueRange(h, l, c, {n}) / close",
    ),
    "bb_pband": _k(
        "volatility",
        osc.bb_pband,
        "bb_pband_{n}",
        "(close - lower) / (upper - lower), bands SMA{n} +- 2 std (ddof 0); 0.5 if equal",
        _window,
        _BB_TA + ".bollinger_pband()",
    ),
    "bb_width": _k(
        "volatility",
        osc.bb_width,
        "bb_width_{n}",
        "100 (upper - lower) / SMA(close, {n})",
        _window,
        _BB_TA + ".bollinger_wband()",
    ),
    "kc_pband": _k(
        "volatility",
        osc.kc_pband,
        "kc_pband_{n}",
        "(close - lower) / (upper - lower), bands SMA{n} of (4H-2L+C)/3 and (-2H+4L+C)/3; 0.5 if equal",
        _window,
        _KC_TA + ".keltner_channel_pband()",
    ),
    "dc_pband": _k(
        "volatility",
        osc.dc_pband,
        "dc_pband_{n}",
        "(close - LL{n}) / (HH{n} - LL{n}); 0.5 if HH = LL",
        _window,
        _DC_TA + ".donchian_channel_pband()",
    ),
    "dc_width": _k(
        "volatility",
        osc.dc_width,
        "dc_width_{n}",
        "100 (HH{n} - LL{n}) / SMA(close, {n})",
        _window,
        _DC_TA + ".donchian_channel_wband()",
    ),
    "hl_range": _k("volatility", osc.hl_range, "hl_range", "(high - low) / close", _zero),
    "close_loc": _k(
        "volatility",
        osc.close_loc,
        "close_loc",
        "(close - low) / (high - low); 0.5 if high = low",
        _zero,
    ),
    "realized_vol": _k(
        "volatility",
        osc.realized_vol,
        "realized_vol_{n}",
        "std(ln(close / close[t-1]), {n} bars, ddof 1)",
        _same,
    ),
    "obv_change": _k(
        "volume",
        fl.obv_change,
        "obv_change_{n}",
        "(OBV - OBV[t-{n}]) / sum(volume, {n}), -1..1; 0 if no volume",
        _same,
        "OnBalanceVolumeIndicator(c, v).diff({n}) / sum(volume, {n})",
    ),
    "vwap_dist": _k(
        "volume",
        fl.vwap_dist,
        "vwap_dist_{n}",
        "close / VWAP{n} - 1, VWAP of (H+L+C)/3; mean of (H+L+C)/3 if no volume",
        _window,
        "close / VolumeWeightedAveragePrice(h, l, c, v, {n}) - 1",
    ),
    "cmf": _k(
        "volume",
        fl.cmf,
        "cmf_{n}",
        "sum(volume ((C-L) - (H-C)) / (H-L), {n}) / sum(volume, {n}); 0 if no volume",
        _window,
        "ChaikinMoneyFlowIndicator(h, l, c, v, {n})",
    ),
    "volume_rel": _k(
        "volume",
        fl.volume_rel,
        "volume_rel_{n}",
        "volume / SMA(volume, {n}) - 1; 0 if the mean is 0",
        _window,
    ),
    "dow_sin": _k(
        "temporal", fl.dow_sin, "dow_sin", "sin(2 pi weekday / 7), Monday = 0, UTC", _zero
    ),
    "dow_cos": _k("temporal", fl.dow_cos, "dow_cos", "cos(2 pi weekday / 7)", _zero),
    "month_sin": _k("temporal", fl.month_sin, "month_sin", "sin(2 pi (month - 1) / 12)", _zero),
    "month_cos": _k("temporal", fl.month_cos, "month_cos", "cos(2 pi (month - 1) / 12)", _zero),
    "dom_sin": _k("temporal", fl.dom_sin, "dom_sin", "sin(2 pi (day - 1) / days in month)", _zero),
    "dom_cos": _k("temporal", fl.dom_cos, "dom_cos", "cos(2 pi (day - 1) / days in month)", _zero),
    "index_ret": _k(
        "index",
        fl.index_ret,
        "index_ret_{n}",
        "I / I[t-{n}] - 1, I = index close aligned to the symbol's bars",
        _same,
    ),
    "rel_strength": _k(
        "index", fl.rel_strength, "rel_strength_{n}", "ret_{n} - index_ret_{n}", _same
    ),
    "beta": _k(
        "index",
        fl.beta,
        "beta_{n}",
        "cov(r, r_I) / var(r_I) of 1-bar returns over {n} bars; 0 if var = 0",
        _same,
    ),
    "corr": _k(
        "index",
        fl.corr,
        "corr_{n}",
        "corr(r, r_I) of 1-bar returns over {n} bars; 0 if either var = 0",
        _same,
    ),
    "excess_ret": _k("index", fl.excess_ret, "excess_ret_{n}", "ret_{n} - index_ret_{n}", _same),
}

LAYOUT: tuple[tuple[str, int], ...] = (
    *(("ret", n) for n in (1, 2, 5, 10, 20)),
    ("log_ret", 1),
    ("gap", 1),
    *(("sma_rel", n) for n in (5, 10, 20, 50, 200)),
    *(("ema_rel", n) for n in (9, 12, 21, 26, 50)),
    ("macd", 26),
    ("macd_signal", 26),
    ("macd_hist", 26),
    ("adx", 14),
    ("adx_pos", 14),
    ("adx_neg", 14),
    ("aroon_up", 25),
    ("aroon_down", 25),
    *(("rsi", n) for n in (7, 14, 21)),
    ("stoch_k", 14),
    ("stoch_d", 14),
    ("williams_r", 14),
    ("roc", 12),
    ("atr_norm", 14),
    *((kind, 20) for kind in ("bb_pband", "bb_width", "kc_pband", "dc_pband", "dc_width")),
    ("hl_range", 1),
    ("close_loc", 1),
    ("realized_vol", 20),
    *((kind, 20) for kind in ("obv_change", "vwap_dist", "cmf", "volume_rel")),
    *((kind, 1) for kind in ("dow_sin", "dow_cos", "month_sin", "month_cos", "dom_sin", "dom_cos")),
    ("index_ret", 5),
    ("index_ret", 20),
    ("rel_strength", 5),
    ("rel_strength", 20),
    ("beta", 60),
    ("corr", 60),
    ("excess_ret", 1),
)


def _spec(kind_name: str, n: int) -> FeatureSpec:
    kind = KINDS[kind_name]
    return FeatureSpec(
        name=kind.name.format(n=n),
        family=kind.family,
        formula=kind.formula.format(n=n),
        window=n,
        warmup=max(kind.warmup(n), 0),
        ta=kind.ta.format(n=n),
        kind=kind_name,
    )


FEATURES: tuple[FeatureSpec, ...] = tuple(_spec(kind, n) for kind, n in LAYOUT)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(spec.family for spec in FEATURES))
FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)
INDEX_FEATURE_NAMES: tuple[str, ...] = tuple(s.name for s in FEATURES if s.family == "index")
WARMUP: int = max(spec.warmup for spec in FEATURES)


def feature_names(with_index: bool) -> tuple[str, ...]:
    """The output columns, in order: all of them, or without the index-relative family."""
    if with_index:
        return FEATURE_NAMES
    return tuple(name for name in FEATURE_NAMES if name not in INDEX_FEATURE_NAMES)


def feature_specs(with_index: bool) -> tuple[FeatureSpec, ...]:
    """The specs behind :func:`feature_names`, in the same order."""
    return tuple(s for s in FEATURES if with_index or s.family != "index")


def feature_table() -> str:
    """The registry as a Markdown table (docs/FEATURES.md embeds it; a test keeps them equal)."""
    lines = [
        "| name | family | formula | window | warm-up | ta reference |",
        "|---|---|---|---|---|---|",
    ]
    for s in FEATURES:
        ta_ref = f"`{s.ta}`" if s.ta else "-"
        lines.append(
            f"| `{s.name}` | {s.family} | {s.formula} | {s.window} | {s.warmup} | {ta_ref} |"
        )
    return "\n".join(lines)
