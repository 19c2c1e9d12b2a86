"""A synthetic market with known structure, for checking the ML pipeline end to end.

Each symbol's close-to-close log return is built from these parts (``mu`` the per-bar drift):

* **factors**: a shock ``z = sqrt(mc) * market_t + sqrt(sc) * sector_t + sqrt(1 - mc - sc) *
  own_t`` of independent unit-variance factors: two symbols in the same sector have return
  correlation ``mc + sc``, in different sectors ``mc``. Symbol ``i`` is in sector ``i % n_sectors``.
* **GARCH(1, 1)**, when on, drives every factor: ``h_t = omega + alpha * u_{t-1}^2 + beta *
  h_{t-1}`` on ``u = sqrt(h) * e`` with ``omega = 1 - alpha - beta`` (variance targeting: the
  long-run variance stays 1, and the correlations above still hold unconditionally).
* **regimes**: one market-wide two-state Markov chain (calm / stressed); its two volatility
  multipliers are scaled so that their long-run mean square is 1.
* **jumps**: with probability ``jump_prob`` per bar and symbol, a N(0, jump_scale^2) jump in units
  of the innovation std; the diffusive part is scaled by ``sqrt(1 - jump_prob * jump_scale^2)``.
  Jumps are each symbol's own, so they shrink correlations by ``1 - jump_prob * jump_scale^2``.
* **the plant**: returns follow an AR(1), ``r_t - mu = planted_strength * (r_{t-1} - mu) + e_t``,
  with the innovations ``e_t`` (all of the above) scaled by ``sqrt(1 - planted_strength^2)``. The
  lag-1 autocorrelation of close-to-close log returns is therefore ``planted_strength``: the next
  return is predictable from the last close-to-close return, which is in the OHLCV.

So ``annual_vol`` is the long-run volatility of returns whatever is switched on. Bars follow a
Brownian motion in log price: the gap (previous close to open) holds a ``gap_share`` of the bar's
variance and any jump; the intrabar path is a Brownian bridge of ``intrabar_steps`` steps from
open to close whose extremes are high and low, so ``low <= open, close <= high`` on every row.
Volume rises with the bar's shock size. Each part draws from its own stream seeded by ``seed``.
"""

from __future__ import annotations

import difflib
import math
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, SymbolNotFound
from core.utc import to_utc
from feeds.frame import make_frame
from feeds.timeframes import get_timeframe, resample

SYMBOL_PREFIX = "SYN"
_MAX_CELLS = 50_000_000  # n_symbols * n_bars (5e7): a few GB of working arrays
Arr = np.ndarray
_STREAMS = ("vols", "factors", "regimes", "jumps", "gaps", "volume", "delist", "intrabar")


def _in(interval: str) -> dict[str, str]:
    """Field metadata: the allowed interval, e.g. ``"[0, 1)"``."""
    return {"range": interval}


def _inside(value: float, interval: str) -> bool:
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    above = value >= lo if interval[0] == "[" else value > lo
    return above and (value <= hi if interval[-1] == "]" else value < hi)


def _validate_fields(obj: object) -> None:
    """Check every field that has a ``range`` against it; the message names field and range."""
    for f in fields(obj):  # type: ignore[arg-type]
        interval, value = f.metadata.get("range"), getattr(obj, f.name)
        if interval is None or (value is None and "None" in str(f.type)):
            continue
        kind = "an integer" if str(f.type) == "int" else "a number"
        types = (int, np.integer) if kind == "an integer" else (int, float, np.integer)
        ok = not isinstance(value, bool) and isinstance(value, types)
        if not (ok and _inside(float(value), interval)):
            name = f"{type(obj).__name__}.{f.name}"
            raise ConfigError(f"{name} must be {kind} in {interval}, got {value!r}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True, kw_only=True)
class GarchConfig(DataConfig):
    """GARCH(1, 1) volatility clustering with variance targeting (``omega = 1 - alpha - beta``).

    ``alpha`` is the reaction to the last squared shock, ``beta`` the persistence of variance;
    ``alpha + beta < 1`` keeps the variance stationary. The long-run variance is 1 (in units of
    the configured volatility), so GARCH adds clustering without changing ``annual_vol``.
    """

    alpha: float = field(default=0.08, metadata=_in("[0, 1)"))
    beta: float = field(default=0.90, metadata=_in("[0, 1)"))

    def __post_init__(self) -> None:
        _validate_fields(self)
        if not self.alpha + self.beta < 1.0:
            raise ConfigError(
                "GarchConfig.alpha + GarchConfig.beta must be < 1 for a stationary variance, "
                f"got {self.alpha} + {self.beta} = {self.alpha + self.beta:g}; lower beta"
            )

    @property
    def omega(self) -> float:
        """The constant term, in units of the long-run variance."""
        return 1.0 - self.alpha - self.beta


@dataclass(frozen=True, kw_only=True)
class RegimeConfig(DataConfig):
    """A market-wide two-state Markov chain: calm (0) and stressed (1).

    Each bar a calm market turns stressed with probability ``p_enter_stress`` and a stressed one
    calms with ``p_exit_stress``. Volatility in stress is ``stressed_vol_mult`` times that in calm;
    both levels are scaled so that the long-run mean variance is unchanged.
    """

    stressed_vol_mult: float = field(default=2.5, metadata=_in("[1, 20]"))
    p_enter_stress: float = field(default=0.01, metadata=_in("(0, 1]"))
    p_exit_stress: float = field(default=0.05, metadata=_in("(0, 1]"))

    def __post_init__(self) -> None:
        _validate_fields(self)

    @property
    def stressed_share(self) -> float:
        """The long-run fraction of bars spent stressed."""
        return self.p_enter_stress / (self.p_enter_stress + self.p_exit_stress)

    def multipliers(self) -> tuple[float, float]:
        """Volatility multipliers (calm, stressed) whose long-run mean square is 1."""
        p = self.stressed_share
        calm = 1.0 / math.sqrt(1.0 - p + p * self.stressed_vol_mult**2)
        return calm, calm * self.stressed_vol_mult


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig(DataConfig):
    """Everything that defines a synthetic market; the same config always gives the same market.

    ``timeframe`` ``1Day`` uses business days (Mon-Fri, 00:00 UTC); intraday timeframes use
    continuous bars. ``annual_vol`` and ``drift`` (mean log return per year) are turned into
    per-bar values with ``bars_per_year`` (None: 252 for daily bars, 365 days of bars intraday).
    Each symbol's volatility is ``annual_vol`` times a lognormal factor with log-std
    ``vol_dispersion`` (mean 1). ``delist_prob`` is the chance that a symbol stops trading inside
    the sample: its frame ends early and ``attrs['delisted_at']`` is the first bar it missed.
    ``gap_share`` is the share of a bar's variance in the previous-close-to-open gap. Volume is
    ``base_volume * ((1 - volume_sensitivity) + volume_sensitivity * |shock| / E|shock|)`` times
    lognormal noise of log-std ``volume_noise``. The module docstring defines the model.
    """

    n_symbols: int = field(default=20, metadata=_in("[1, 100000]"))
    n_bars: int = field(default=2520, metadata=_in("[2, 10000000]"))
    start: str | pd.Timestamp = "2015-01-02"
    timeframe: str = "1Day"
    seed: int = field(default=0, metadata=_in("[0, 9.2e18]"))
    n_sectors: int = field(default=4, metadata=_in("[1, 10000]"))
    market_corr: float = field(default=0.3, metadata=_in("[0, 1)"))
    sector_corr: float = field(default=0.2, metadata=_in("[0, 1)"))
    annual_vol: float = field(default=0.25, metadata=_in("(0, 5]"))
    vol_dispersion: float = field(default=0.0, metadata=_in("[0, 2]"))
    drift: float = field(default=0.05, metadata=_in("[-5, 5]"))
    bars_per_year: float | None = field(default=None, metadata=_in("(0, 1e8]"))
    garch: GarchConfig | None = GarchConfig()
    jump_prob: float = field(default=0.005, metadata=_in("[0, 1]"))
    jump_scale: float = field(default=4.0, metadata=_in("[0, 50]"))
    regimes: RegimeConfig | None = RegimeConfig()
    delist_prob: float = field(default=0.0, metadata=_in("[0, 1]"))
    planted_strength: float = field(default=0.0, metadata=_in("(-1, 1)"))
    gap_share: float = field(default=0.1, metadata=_in("[0, 1)"))
    intrabar_steps: int = field(default=8, metadata=_in("[1, 256]"))
    start_price: float = field(default=100.0, metadata=_in("(0, 1e9]"))
    base_volume: float = field(default=1e6, metadata=_in("(0, 1e15]"))
    volume_sensitivity: float = field(default=0.6, metadata=_in("[0, 1]"))
    volume_noise: float = field(default=0.3, metadata=_in("[0, 3]"))

    def __post_init__(self) -> None:
        own = "SyntheticConfig"
        _validate_fields(self)
        cells, corr = self.n_symbols * self.n_bars, self.market_corr + self.sector_corr
        jumps = self.jump_prob * self.jump_scale**2
        _require(cells <= _MAX_CELLS, f"{own}.n_symbols * n_bars must be <= 5e7, got {cells:,}")
        _require(corr < 1, f"{own}.market_corr + sector_corr must be < 1, got {corr:g}")
        _require(jumps < 1, f"{own}.jump_prob * jump_scale**2 must be < 1, got {jumps:g}")
        for name, kind in (("garch", GarchConfig), ("regimes", RegimeConfig)):
            if not isinstance(getattr(self, name), kind | None):
                raise ConfigError(f"{own}.{name} must be a {kind.__name__} or None")
        object.__setattr__(self, "timeframe", get_timeframe(str(self.timeframe)).name)
        try:
            (self.first_bar() + self.n_bars * 2 * get_timeframe(self.timeframe).delta).as_unit("ns")
        except (ValueError, TypeError, OverflowError) as err:
            raise ConfigError(
                f"{own}.start must be a date in 1677-2262 leaving room for n_bars="
                f"{self.n_bars} bars of {self.timeframe}, got {self.start!r}"
            ) from err

    @classmethod
    def pure_random_walk(cls, **overrides: Any) -> SyntheticConfig:
        """I.i.d. Gaussian log returns: no factors, drift, GARCH, jumps, regimes or plant.

        Symbols are independent of each other and of their own past: there is nothing to
        predict. ``overrides`` apply on top (e.g. ``planted_strength=0.05`` for a bare AR(1)).
        """
        zero = "market_corr sector_corr drift vol_dispersion jump_prob delist_prob planted_strength"
        base: dict[str, Any] = {**dict.fromkeys(zero.split(), 0.0), "garch": None, "regimes": None}
        return cls(**{**base, **overrides})

    @property
    def annualisation(self) -> float:
        """Bars per year used to turn ``annual_vol`` and ``drift`` into per-bar values."""
        if self.bars_per_year is not None:
            return float(self.bars_per_year)
        tf = get_timeframe(self.timeframe)
        return pd.Timedelta("365D") / tf.delta if tf.intraday else 252.0

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbol names: ``SYN000``, ``SYN001``, ... (wider past 1000 symbols)."""
        width = max(3, len(str(self.n_symbols - 1)))
        return tuple(f"{SYMBOL_PREFIX}{i:0{width}d}" for i in range(self.n_symbols))

    def first_bar(self) -> pd.Timestamp:
        """``start`` as a UTC timestamp (a naive value is taken as UTC)."""
        t = to_utc(self.start)
        if t is None:
            raise ValueError("start is missing")
        return t

    def index(self) -> pd.DatetimeIndex:
        """The bar timestamps (UTC) of a symbol that is never delisted."""
        tf = get_timeframe(self.timeframe)
        if tf.intraday:
            idx = pd.date_range(self.first_bar(), periods=self.n_bars, freq=tf.offset)
        else:
            idx = pd.bdate_range(self.first_bar(), periods=self.n_bars, tz="UTC")
        return pd.DatetimeIndex(idx, name="datetime").as_unit("ns")


@dataclass(frozen=True)
class MarketPaths:
    """The latent paths behind a market: arrays (n_bars, n_symbols) unless noted.

    ``log_returns`` close-to-close, ``gaps`` log(open / previous close), ``bar_vol`` the
    conditional std of the bar's diffusive move, ``volume``; ``regime`` (n_bars,) 0 calm or
    1 stressed; ``sectors``, ``symbol_vol`` (annualised) and ``n_live`` (bars traded) per symbol.
    """

    log_returns: np.ndarray
    gaps: np.ndarray
    bar_vol: np.ndarray
    volume: np.ndarray
    regime: np.ndarray
    sectors: np.ndarray
    symbol_vol: np.ndarray
    n_live: np.ndarray


def _rng(seed: int, stream: str, *sub: int) -> np.random.Generator:
    """An independent generator per part (and symbol), so toggling one part leaves the others."""
    key = (_STREAMS.index(stream), *sub)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _garch_variance(e: np.ndarray, garch: GarchConfig) -> np.ndarray:
    """h_t of unit-variance GARCH(1, 1) series driven by i.i.d. ``e`` (a loop over time only)."""
    c = garch.alpha * e * e + garch.beta  # h_t = omega + h_{t-1} * (alpha e_{t-1}^2 + beta)
    h = np.empty_like(e)
    h[0] = 1.0
    for t in range(1, len(e)):
        np.multiply(h[t - 1], c[t - 1], out=h[t])
        h[t] += garch.omega
    return h


def _factor_shocks(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance correlated shocks (bars, symbols) and their conditional std."""
    n_sym, n_sec = cfg.n_symbols, cfg.n_sectors
    f = _rng(cfg.seed, "factors").standard_normal((cfg.n_bars, 1 + n_sec + n_sym))
    h = None if cfg.garch is None else _garch_variance(f, cfg.garch)
    if h is not None:
        f *= np.sqrt(h)
    own_share = 1.0 - cfg.market_corr - cfg.sector_corr
    parts = [
        (own_share, 1 + n_sec + np.arange(n_sym)),
        (cfg.market_corr, np.zeros(n_sym, dtype=np.intp)),
        (cfg.sector_corr, 1 + np.arange(n_sym) % n_sec),
    ]
    parts = [(share, cols) for share, cols in parts if share > 0]
    z = sum(math.sqrt(share) * f[:, cols] for share, cols in parts)
    if h is None:
        return np.asarray(z), np.ones((cfg.n_bars, n_sym))
    return np.asarray(z), np.sqrt(sum(share * h[:, cols] for share, cols in parts))


def _regime_path(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """The market regime per bar (0 calm, 1 stressed) and its volatility multiplier."""
    n, rc = cfg.n_bars, cfg.regimes
    if rc is None:
        return np.zeros(n, dtype=np.int8), np.ones(n)
    rng, covered, runs = _rng(cfg.seed, "regimes"), 0, []
    first = int(rng.random() < rc.stressed_share)  # start from the stationary distribution
    p_leave = (rc.p_enter_stress, rc.p_exit_stress)  # leaving calm, leaving stress
    m = 16 + int(n / (1 / p_leave[0] + 1 / p_leave[1]))  # pairs of runs per draw
    while covered < n:  # alternate run lengths: geometric with the chance of leaving
        pair = [rng.geometric(p_leave[(first + k) % 2], size=m) for k in range(2)]
        runs.append(np.column_stack(pair).ravel())
        covered += int(runs[-1].sum())
    lengths = np.concatenate(runs)
    states = (first + np.arange(len(lengths))) % 2
    regime = np.repeat(states, lengths)[:n].astype(np.int8)
    return regime, np.asarray(rc.multipliers())[regime]


def _ar_filter(e: np.ndarray, phi: float) -> np.ndarray:
    """y_t = phi * y_{t-1} + e_t started from the stationary distribution (in place)."""
    if phi == 0.0:
        return e
    e[0] /= math.sqrt(1.0 - phi * phi)
    for t in range(1, len(e)):
        e[t] += phi * e[t - 1]
    return e


def _delist_bars(cfg: SyntheticConfig) -> np.ndarray:
    """Bars each symbol trades: n_bars, or fewer (at least a tenth) for a delisted symbol."""
    rng = _rng(cfg.seed, "delist")
    n_live = np.full(cfg.n_symbols, cfg.n_bars, dtype=np.int64)
    delisted = rng.random(cfg.n_symbols) < cfg.delist_prob
    lo = min(max(1, cfg.n_bars // 10), cfg.n_bars - 1)
    n_live[delisted] = rng.integers(lo, cfg.n_bars, size=int(delisted.sum()))
    return n_live


def _volume(cfg: SyntheticConfig, activity: np.ndarray) -> np.ndarray:
    """Whole-share volume >= 1 rising with ``activity``, the bar's |shock| / long-run std."""
    s, vn = cfg.volume_sensitivity, cfg.volume_noise
    level = (1.0 - s) + s * activity / math.sqrt(2.0 / math.pi)
    noise = np.exp(vn * _rng(cfg.seed, "volume").standard_normal(activity.shape) - vn * vn / 2)
    return np.maximum(np.round(cfg.base_volume * level * noise), 1.0)


def _jumps(cfg: SyntheticConfig, sd: np.ndarray) -> np.ndarray:
    """Jumps (bars, symbols): N(0, (jump_scale * sd)^2) with probability jump_prob, else 0."""
    jumps = np.zeros((cfg.n_bars, cfg.n_symbols))
    if cfg.jump_prob > 0 and cfg.jump_scale > 0:
        rng = _rng(cfg.seed, "jumps")
        hit = rng.random(jumps.shape) < cfg.jump_prob
        jumps[hit] = rng.standard_normal(int(hit.sum())) * cfg.jump_scale
    return jumps * sd


def simulate_paths(config: SyntheticConfig) -> MarketPaths:
    """Simulate the return, gap, volatility and volume paths of every symbol (no frames yet)."""
    cfg, phi, g = config, config.planted_strength, config.gap_share
    disp = cfg.vol_dispersion
    noise = _rng(cfg.seed, "vols").standard_normal(cfg.n_symbols)
    symbol_vol = cfg.annual_vol * np.exp(disp * noise - disp * disp / 2)
    # Innovation std per bar, so that the AR(1) returns have the symbol's long-run volatility.
    innov_sd = symbol_vol / math.sqrt(cfg.annualisation) * math.sqrt(1.0 - phi * phi)
    z, cond_sd = _factor_shocks(cfg)
    regime, mult = _regime_path(cfg)
    scale = innov_sd * math.sqrt(1.0 - cfg.jump_prob * cfg.jump_scale**2) * mult[:, None]
    jumps = _jumps(cfg, innov_sd)
    shock = scale * z + jumps
    returns = _ar_filter(shock.copy(), phi) + cfg.drift / cfg.annualisation
    bar_vol = scale * cond_sd
    # The Brownian-bridge point at variance-time g: the gap holds a share g of the diffusive move.
    gap_noise = _rng(cfg.seed, "gaps").standard_normal(shock.shape)
    gaps = g * (returns - jumps) + math.sqrt(g * (1.0 - g)) * bar_vol * gap_noise + jumps
    return MarketPaths(
        log_returns=returns,
        gaps=gaps,
        bar_vol=bar_vol,
        volume=_volume(cfg, np.abs(shock) / innov_sd),
        regime=regime,
        sectors=np.arange(cfg.n_symbols) % cfg.n_sectors,
        symbol_vol=symbol_vol,
        n_live=_delist_bars(cfg),
    )


def _ohlc(o: Arr, c: Arr, spread: Arr, steps: int, rng: np.random.Generator) -> dict[str, Arr]:
    """Open/high/low/close from a Brownian bridge of ``steps`` steps from log open ``o`` to ``c``.

    ``spread`` is the std of the whole intrabar move; high and low are the path's extremes, taken
    after exponentiating, together with open and close, so the OHLC order always holds.
    """
    open_, close = np.exp(o), np.exp(c)
    high, low = np.maximum(open_, close), np.minimum(open_, close)
    if steps > 1:
        walk = np.cumsum(rng.standard_normal((len(o), steps)), axis=1)
        walk *= (spread / math.sqrt(steps))[:, None]
        frac = np.arange(1, steps) / steps
        inner = walk[:, :-1] - frac * walk[:, -1:] + o[:, None] + frac * (c - o)[:, None]
        high = np.maximum(high, np.exp(inner.max(axis=1)))
        low = np.minimum(low, np.exp(inner.min(axis=1)))
    return {"open": open_, "high": high, "low": low, "close": close}


def _frame(cfg: SyntheticConfig, p: MarketPaths, i: int, idx: pd.DatetimeIndex) -> pd.DataFrame:
    """The canonical frame of symbol ``i``, cut at its delisting."""
    n, p0 = int(p.n_live[i]), math.log(cfg.start_price)
    log_close = p0 + np.cumsum(p.log_returns[:n, i])
    log_open = np.concatenate(([p0], log_close[:-1])) + p.gaps[:n, i]
    spread = p.bar_vol[:n, i] * math.sqrt(1.0 - cfg.gap_share)
    cols = _ohlc(log_open, log_close, spread, cfg.intrabar_steps, _rng(cfg.seed, "intrabar", i))
    cols["volume"] = p.volume[:n, i]
    extra: dict[str, Any] = {"sector": int(p.sectors[i]), "annual_vol": float(p.symbol_vol[i])}
    extra["delisted_at"] = idx[n].isoformat() if n < cfg.n_bars else None
    extra |= {"planted_strength": cfg.planted_strength, "seed": cfg.seed}
    return make_frame(
        pd.DataFrame(cols, index=idx[:n]),
        symbol=cfg.symbols[i],
        source=SyntheticSource.name,
        timeframe=cfg.timeframe,
        asset_class="stocks",
        extra_attrs=extra,
    )


def generate_market(config: SyntheticConfig) -> dict[str, pd.DataFrame]:
    """Every symbol's canonical OHLCV frame, in symbol order; a pure function of ``config``.

    Beside the usual attrs each frame records ``sector`` (int), ``delisted_at`` (ISO time of the
    first missed bar, or None), ``annual_vol`` (the symbol's), ``planted_strength`` and ``seed``.
    """
    paths, index = simulate_paths(config), config.index()
    return {sym: _frame(config, paths, i, index) for i, sym in enumerate(config.symbols)}


def _with_overrides(config: SyntheticConfig | None, overrides: dict[str, Any]) -> SyntheticConfig:
    if config is not None and not isinstance(config, SyntheticConfig):
        raise ConfigError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    known = [f.name for f in fields(SyntheticConfig)]
    for key in sorted(set(overrides) - set(known)):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown SyntheticConfig field {key!r}{hint}; known: {', '.join(known)}")
    return replace(config or SyntheticConfig(), **overrides)


class SyntheticSource:
    """A :class:`~feeds.sources.base.Source` serving one generated market (made on first use).

    ``SyntheticSource(config=SyntheticConfig(...))``, or overrides of the default config such as
    ``SyntheticSource(n_symbols=5, seed=3)``. ``fetch`` returns a copy of the symbol's frame cut
    to ``[start, end)``, resampled when a coarser timeframe than the generated one is asked for.
    """

    name: str = "synthetic"

    def __init__(self, config: SyntheticConfig | None = None, **overrides: Any) -> None:
        self.config = _with_overrides(config, overrides)
        self._market: dict[str, pd.DataFrame] | None = None
        self._lock = threading.Lock()

    def market(self) -> dict[str, pd.DataFrame]:
        """The whole generated market, cached per instance (treat the frames as read-only)."""
        with self._lock:
            if self._market is None:
                self._market = generate_market(self.config)
            return self._market

    def fetch(
        self,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Return ``symbol``'s frame with bars in ``[start, end)`` at ``timeframe``."""
        market = self.market()
        if symbol not in market:
            names = self.config.symbols
            raise SymbolNotFound(
                f"synthetic: no symbol {symbol!r}; this market has {len(names)} symbols, "
                f"{names[0]} to {names[-1]} (raise SyntheticConfig.n_symbols for more)"
            )
        frame = self._at_timeframe(market[symbol], timeframe)
        lo, hi = to_utc(start), to_utc(end)
        first = 0 if lo is None else int(frame.index.searchsorted(lo))
        stop = len(frame) if hi is None else int(frame.index.searchsorted(hi))
        if first >= stop:
            raise SymbolNotFound(
                f"synthetic: {symbol} has no bars in [{lo}, {hi}); "
                f"it has {frame.index[0]} to {frame.index[-1]}"
            )
        out = frame.iloc[first:stop].copy()
        out.attrs = dict(frame.attrs)
        return out

    def _at_timeframe(self, frame: pd.DataFrame, timeframe: str) -> pd.DataFrame:
        have, want = get_timeframe(self.config.timeframe), get_timeframe(timeframe)
        if want.name == have.name:
            return frame
        if want.delta < have.delta:
            raise ConfigError(
                f"synthetic: the market was generated at {have.name}; cannot make finer {want.name} "
                f"bars. Generate them instead: SyntheticConfig(timeframe={want.name!r})"
            )
        return resample(frame, want.name)
