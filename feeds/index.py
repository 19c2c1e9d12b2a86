"""Synthetic index feeds built from weighted constituents, point in time.

The level is chained bar by bar, so it stays continuous across membership changes, rebalances
and splits (the job a Dow-style divisor does)::

    L_t = L_{t-1} * (1 + sum_i w_{i,t-1} * r_{i,t}),   r_{i,t} = C_{i,t} * s_{i,t} / C_{i,t-1} - 1

where ``s`` is the split ratio on ``t`` (1 unless the frame has a ``stock_splits`` column) and
the weights ``w`` (summing to one over the members at ``t-1``) come from the method:

* ``price``: proportional to the previous close (Dow style; a split lowers the weight);
* ``cap``: proportional to shares x previous close (shares from a point-in-time table), or given
  starting weights that drift with prices between reconstitutions;
* ``equal``: 1/N at each rebalance date (monthly ``M`` or quarterly ``Q``), drifting in between;
* ``fixed``: the given weights, restored at each rebalance date (every bar when none is given).

Open, high and low use the same weights on each member's open/high/low over its previous close;
high and low are then bounded by the bar's open and close (the weighted highs are an upper bound
of the true intrabar index high). Volume is the members' sum.

Membership is point in time: a membership table (``date,symbol[,weight|shares]``) lists the
members from each date until the next date in the file, or spans (``symbol,start,end``,
``feeds.membership``) give each member's spells, so names that left keep their history up to the
day they left and no survivorship bias is imposed. Built from a named ``universe`` (today's
constituents) instead, the index carries a survivorship warning (``IndexResult.warnings`` and
the stored frame's ``survivorship`` attribute). Constituents must all have the index's bar size
(a daily member on an hourly calendar would bring the day's close in at its first hour). A member with no bar on a calendar day
(the calendar is the union of the members' timestamps) is carried forward at its last close for
at most ``carry_limit`` bars; beyond that building fails with an error naming it and the dates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, DataError, SymbolNotFound
from feeds.frame import make_frame
from feeds.membership import MemberRow, Membership, MemberSpan, member_table, rows_from_table
from feeds.membership import read_membership as read_membership
from feeds.membership import read_weights as read_weights
from feeds.store import ParquetStore
from feeds.universes import get_universe, survivorship_warning

METHODS = ("price", "cap", "equal", "fixed")
REBALANCE = {"M": "month", "Q": "quarter"}


@dataclass(frozen=True, kw_only=True)
class IndexConfig(DataConfig):
    """How to build one index. Give one of ``constituents`` (or a named ``universe``, whose
    today's constituents they become), ``membership`` (snapshots) or ``spans``.

    ``membership`` and ``shares`` are point-in-time rows (a ``date,symbol,...`` frame is
    accepted and turned into rows), ``spans`` are ``feeds.membership.MemberSpan`` rows, so the
    config stays plain data. A ``universe`` without point-in-time membership is today's
    constituents: the result's notes and the frame's ``survivorship`` attribute say so.
    """

    name: str
    method: str = "equal"
    constituents: tuple[str, ...] = ()
    membership: tuple[MemberRow, ...] | None = None
    weights: dict[str, float] | None = None
    shares: tuple[MemberRow, ...] | None = None
    spans: tuple[MemberSpan, ...] | None = None
    universe: str | None = None
    rebalance: str | None = None
    carry_limit: int = 5
    base_level: float = 1000.0
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "membership", rows_from_table(self.membership))
        object.__setattr__(self, "shares", rows_from_table(self.shares))
        if self.weights is not None:
            object.__setattr__(self, "weights", dict(self.weights))
        if self.universe is not None:
            today = get_universe(self.universe)
            if self.constituents and tuple(self.constituents) != today:
                raise ConfigError("give constituents or a universe, not both")
            if self.membership is None and self.spans is None:
                object.__setattr__(self, "constituents", today)
        self._check()

    def _check(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"index name must be non-empty and without '/', got {self.name!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        given = [bool(self.constituents), self.membership is not None, self.spans is not None]
        if sum(given) != 1:
            raise ConfigError("give either constituents or a membership table, not both or neither")
        if self.spans is not None and not self.spans:
            raise ConfigError("spans: no rows; each is symbol,start[,end]")
        if self.rebalance is not None and self.rebalance not in REBALANCE:
            raise ConfigError(
                f"rebalance must be M (monthly) or Q (quarterly), got {self.rebalance!r}"
            )
        if self.method == "fixed" and not self.weights and self.membership is None:  # spans too
            raise ConfigError("method 'fixed' needs weights (e.g. {'AAPL': 0.6, 'MSFT': 0.4})")
        if self.carry_limit < 0:
            raise ConfigError(f"carry_limit must be >= 0, got {self.carry_limit}")
        if self.base_level <= 0:
            raise ConfigError(f"base_level must be > 0, got {self.base_level}")
        if self.weights and any(w < 0 for w in self.weights.values()):
            raise ConfigError(f"weights must be >= 0, got {dict(self.weights)}")

    def symbols(self) -> list[str]:
        """The members, in order of first appearance."""
        if self.membership is not None:
            return list(dict.fromkeys(r.symbol for r in self.membership))
        if self.spans is not None:
            return list(dict.fromkeys(r.symbol for r in self.spans))
        return list(dict.fromkeys(self.constituents))

    def warnings(self) -> list[str]:
        """The survivorship warning when the members are a universe's today's constituents."""
        if self.universe is None or self.membership is not None or self.spans is not None:
            return []
        return [survivorship_warning(self.universe)]


@dataclass
class IndexResult:
    """The index frame, the weights used each bar, notes on what was done, and warnings
    (survivorship: a universe's today's constituents)."""

    frame: pd.DataFrame
    weights: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    final_weights: np.ndarray | None = None  # after the last bar's drift: where a chain goes on


def _check_timeframes(
    frames: Mapping[str, pd.DataFrame], symbols: list[str], name: str, timeframe: str
) -> None:
    """Refuse constituents of another bar size than the index's: a daily bar on an hourly
    calendar would put the day's close into the index at the day's first hour (read ahead)."""
    sizes = {s: frames[s].attrs.get("timeframe") for s in symbols if s in frames}
    other = {s: tf for s, tf in sizes.items() if tf is not None and tf != timeframe}
    if other:
        sym, tf = next(iter(other.items()))
        raise DataError(
            f"index {name}: constituent {sym} has {tf} bars, the index is built at {timeframe}; "
            f"give every constituent at {timeframe} (feeds.timeframes.resample the finer ones) "
            f"or build with timeframe={tf!r}"
        )


def _panel(
    frames: Mapping[str, pd.DataFrame], symbols: list[str], cfg: IndexConfig
) -> dict[str, pd.DataFrame]:
    missing = [s for s in symbols if s not in frames]
    if missing:
        raise DataError(
            f"index {cfg.name}: no data for constituent(s) {', '.join(missing)}; download or import them first"
        )
    cal = pd.DatetimeIndex(
        sorted(set().union(*(frames[s].index for s in symbols))), name="datetime"
    )
    if cfg.start is not None:
        cal = cal[cal >= cfg.start]
    if cfg.end is not None:
        cal = cal[cal < cfg.end]
    if len(cal) < 2:
        raise DataError(
            f"index {cfg.name}: fewer than 2 bars in the range {cfg.start} .. {cfg.end}"
        )
    out = {}
    for col in ("open", "high", "low", "close", "volume"):
        out[col] = pd.DataFrame({s: frames[s][col].reindex(cal) for s in symbols}, index=cal)
    splits = {
        s: frames[s]["stock_splits"].reindex(cal) if "stock_splits" in frames[s] else None
        for s in symbols
    }
    out["split"] = pd.DataFrame(
        {s: (v.fillna(0.0).replace(0.0, 1.0) if v is not None else 1.0) for s, v in splits.items()},
        index=cal,
    )
    return out


def _members(
    cfg: IndexConfig, symbols: list[str], cal: pd.DatetimeIndex, has_bar: np.ndarray
) -> np.ndarray:
    """Boolean (T, N): is symbol j a member on bar t."""
    if cfg.spans is not None:
        spans = Membership(cfg.spans)
        return np.column_stack([spans.mask(s, cal) for s in symbols])
    if cfg.membership is None:
        # a constituent is a member from its first bar to its last (it cannot be held before)
        first = np.argmax(has_bar, axis=0)
        last = len(cal) - 1 - np.argmax(has_bar[::-1], axis=0)
        t = np.arange(len(cal))[:, None]
        return (t >= first) & (t <= last) & has_bar.any(axis=0)
    m = member_table(cfg.membership)
    dates = sorted(m["date"].unique())
    member = np.zeros((len(cal), len(symbols)), dtype=bool)
    col = {s: j for j, s in enumerate(symbols)}
    for k, d in enumerate(dates):
        lo = cal.searchsorted(d)
        hi = cal.searchsorted(dates[k + 1]) if k + 1 < len(dates) else len(cal)
        for s in m.loc[m["date"] == d, "symbol"]:
            member[lo:hi, col[s]] = True
    return member


def _check_gaps(
    cfg: IndexConfig,
    symbols: list[str],
    cal: pd.DatetimeIndex,
    member: np.ndarray,
    has_bar: np.ndarray,
) -> None:
    need = member & ~has_bar
    for j in np.flatnonzero(need.any(axis=0)):
        run = 0
        for t in range(len(cal)):
            run = run + 1 if need[t, j] else 0
            if run > cfg.carry_limit:
                t0 = t - run + 1
                end = t
                while end + 1 < len(cal) and need[end + 1, j]:
                    end += 1
                raise DataError(
                    f"index {cfg.name}: constituent {symbols[j]} has no bars from {cal[t0].date()} to "
                    f"{cal[end].date()} ({end - t0 + 1} bars; carry-forward limit {cfg.carry_limit}); "
                    "download the missing data, end its membership earlier, or raise carry_limit"
                )


def _target_weights(
    cfg: IndexConfig,
    symbols: list[str],
    t: int,
    cal: pd.DatetimeIndex,
    close_prev: np.ndarray,
    member: np.ndarray,
    shares: np.ndarray | None,
    given: np.ndarray | None,
) -> np.ndarray:
    if cfg.method == "price":
        w = np.where(member, close_prev, 0.0)
    elif cfg.method == "cap" and shares is not None:
        w = np.where(member, close_prev * shares[t], 0.0)
    elif given is not None:
        w = np.where(member, given, 0.0)
    else:
        w = member.astype(np.float64)
    total = w.sum()
    return w / total if total > 0 else w


def _given_weights(cfg: IndexConfig, symbols: list[str], notes: list[str]) -> np.ndarray | None:
    if not cfg.weights:
        return None
    unknown = sorted(set(cfg.weights) - set(symbols))
    if unknown:
        raise DataError(
            f"index {cfg.name}: weights name symbol(s) not in the index: {', '.join(unknown)}"
        )
    w = np.array([float(cfg.weights.get(s, 0.0)) for s in symbols])
    total = w.sum()
    if total <= 0:
        raise ConfigError(f"index {cfg.name}: weights sum to {total}; they must be positive")
    if abs(total - 1.0) > 1e-9:
        notes.append(
            f"weights summed to {total:.6g}; each was divided by that sum so they add to 1"
        )
    return w / total


def _point_in_time(
    table: pd.DataFrame, value: str, symbols: list[str], cal: pd.DatetimeIndex
) -> np.ndarray:
    """A (T, N) array of ``value`` from a ``date,symbol,value`` table, carried forward in time."""
    wide = table.pivot_table(index="date", columns="symbol", values=value, aggfunc="last")
    wide = wide.reindex(columns=symbols)
    full = wide.reindex(wide.index.union(cal)).sort_index().ffill().reindex(cal)
    return full.fillna(0.0).to_numpy(dtype=np.float64)


def _resets(
    cfg: IndexConfig, cal: pd.DatetimeIndex, member: np.ndarray, drifting: bool
) -> np.ndarray:
    """(T,) bool: recompute target weights before bar t's return."""
    reset = np.ones(len(cal), dtype=bool)
    if not drifting:
        return reset
    changed = np.zeros(len(cal), dtype=bool)
    changed[1:] = (member[1:] != member[:-1]).any(axis=1)
    period = np.zeros(len(cal), dtype=bool)
    if cfg.rebalance is not None:
        key = cal.month if cfg.rebalance == "M" else cal.quarter
        period[1:] = (key[1:] != key[:-1]) | (cal.year[1:] != cal.year[:-1])
    reset[1:] = changed[1:] | period[1:]
    return reset


def build_index(
    frames: Mapping[str, pd.DataFrame],
    cfg: IndexConfig,
    timeframe: str = "1Day",
    *,
    start_weights: np.ndarray | None = None,
) -> IndexResult:
    """Build the index described by ``cfg`` from constituent OHLCV ``frames`` (by symbol).

    ``start_weights`` continues a chain (:mod:`feeds.live_index`): the frames then start at
    the last bar already built, ``cfg.base_level`` is that bar's close and ``start_weights``
    the result's ``final_weights`` there; the bars after it are those of a build over all."""
    notes: list[str] = []
    symbols = cfg.symbols()
    _check_timeframes(frames, symbols, cfg.name, timeframe)
    p = _panel(frames, symbols, cfg)
    cal = pd.DatetimeIndex(p["close"].index)
    has_bar = p["close"].notna().to_numpy()
    member = _members(cfg, symbols, cal, has_bar)
    _check_gaps(cfg, symbols, cal, member, has_bar)
    src = _weight_sources(cfg, symbols, cal, notes)
    drifting = cfg.method in ("equal", "fixed") or (cfg.method == "cap" and src.shares_t is None)
    if cfg.method == "fixed" and cfg.rebalance is None:
        drifting = False  # restored every bar
    reset = _resets(cfg, cal, member, drifting)
    return _chain(cfg, symbols, cal, _Bars.of(p, member), reset, src, notes, timeframe,
                  start_weights)  # fmt: skip


@dataclass(frozen=True)
class _WeightSources:
    """Where target weights come from: given weights, point-in-time weights or share counts."""

    given: np.ndarray | None
    given_t: np.ndarray | None
    shares_t: np.ndarray | None


def _weight_sources(
    cfg: IndexConfig, symbols: list[str], cal: pd.DatetimeIndex, notes: list[str]
) -> _WeightSources:
    given = _given_weights(cfg, symbols, notes)
    table = member_table(cfg.membership) if cfg.membership is not None else None
    given_t = shares_t = None
    if table is not None and "weight" in table and cfg.method in ("fixed", "cap"):
        given_t = _point_in_time(table, "weight", symbols, cal)
    if cfg.shares is not None:
        shares_t = _point_in_time(member_table(cfg.shares), "shares", symbols, cal)
    elif table is not None and "shares" in table:
        shares_t = _point_in_time(table, "shares", symbols, cal)
    if cfg.method == "cap" and shares_t is None and given is None and given_t is None:
        raise ConfigError(
            f"index {cfg.name}: method 'cap' needs a shares table or starting weights"
        )
    return _WeightSources(given=given, given_t=given_t, shares_t=shares_t)


@dataclass(frozen=True)
class _Bars:
    """The members' bars as arrays: closes carried forward, a carried bar flat at its close."""

    close: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    split: np.ndarray
    volume: np.ndarray  # the members' summed volume per bar
    member: np.ndarray

    @classmethod
    def of(cls, p: dict[str, pd.DataFrame], member: np.ndarray) -> _Bars:
        close = p["close"].ffill().to_numpy()
        flat = {k: p[k].to_numpy() for k in ("open", "high", "low")}
        flat = {k: np.where(np.isnan(v), close, v) for k, v in flat.items()}
        vol = np.where(member, np.nan_to_num(p["volume"].to_numpy()), 0.0).sum(axis=1)
        split = p["split"].to_numpy(dtype=np.float64)
        return cls(close=close, split=split, volume=vol, member=member, **flat)


def _chain(
    cfg: IndexConfig,
    symbols: list[str],
    cal: pd.DatetimeIndex,
    bars: _Bars,
    reset: np.ndarray,
    src: _WeightSources,
    notes: list[str],
    timeframe: str,
    start_weights: np.ndarray | None = None,
) -> IndexResult:
    """Chain the level bar by bar (the module docstring's formula) and build the index frame
    (from ``start_weights`` after bar 0 when continuing a chain)."""
    T, N = bars.close.shape
    ohlc = np.full((T, 4), cfg.base_level)
    weights = np.zeros((T, N))
    fresh = start_weights is None
    w = np.zeros(N) if start_weights is None else np.asarray(start_weights, dtype=np.float64)
    for t in range(1, T):
        valid = bars.member[t] & np.isfinite(bars.close[t - 1]) & np.isfinite(bars.close[t])
        first = fresh and t == 1
        w = _weights_before(cfg, symbols, cal, bars, src, t, w, valid, reset[t] or first)
        weights[t] = w
        ohlc[t], growth = _bar(ohlc[t - 1, 3], w, bars, t, valid)
        if growth > 0:
            w = w * growth_of_members(bars, t, valid) / growth
    data = pd.DataFrame(ohlc, index=cal, columns=["open", "high", "low", "close"])
    data["volume"] = bars.volume
    frame = make_frame(
        data,
        symbol=cfg.name,
        source="index",
        timeframe=timeframe,
        adjustment="adjusted",
        asset_class="index",
        extra_attrs={
            "method": cfg.method,
            "members": ",".join(symbols),
            "rebalance": cfg.rebalance or "",
            **({"universe": cfg.universe} if cfg.universe else {}),
            **({"survivorship": "; ".join(cfg.warnings())} if cfg.warnings() else {}),
            "config": json.dumps(cfg.to_dict()),  # how to continue it live (feeds.live_index)
        },
    )
    return IndexResult(
        frame=frame, weights=pd.DataFrame(weights, index=cal, columns=symbols), notes=notes,
        warnings=cfg.warnings(), final_weights=w,
    )  # fmt: skip


def _weights_before(
    cfg: IndexConfig,
    symbols: list[str],
    cal: pd.DatetimeIndex,
    bars: _Bars,
    src: _WeightSources,
    t: int,
    w: np.ndarray,
    valid: np.ndarray,
    reset: bool,
) -> np.ndarray:
    """Bar ``t``'s weights: new targets at a reset, else the drifted ones over the valid members."""
    prev = np.nan_to_num(bars.close[t - 1])
    if reset:
        g = src.given_t[t] if src.given_t is not None else src.given
        return _target_weights(cfg, symbols, t, cal, prev, valid, src.shares_t, g)
    w = np.where(valid, w, 0.0)
    total = w.sum()
    if total > 0:
        return w / total
    return _target_weights(cfg, symbols, t, cal, prev, valid, src.shares_t, src.given)


def growth_of_members(bars: _Bars, t: int, valid: np.ndarray) -> np.ndarray:
    """Each member's close-to-close growth into bar ``t`` (split-adjusted; 1 for non-members)."""
    safe_prev = np.where(valid, bars.close[t - 1], 1.0)
    return np.where(valid, bars.close[t] * bars.split[t] / safe_prev, 1.0)


def _bar(
    level: float, w: np.ndarray, bars: _Bars, t: int, valid: np.ndarray
) -> tuple[np.ndarray, float]:
    """Bar ``t``'s index open, high, low, close from the previous ``level``; and 1 + its return."""
    safe_prev = np.where(valid, bars.close[t - 1], 1.0)

    def moved(px: np.ndarray) -> float:
        rel = np.where(valid, px[t] * bars.split[t] / safe_prev, 1.0)
        return level * (1.0 + float(w @ (rel - 1.0)))

    r = float(w @ (growth_of_members(bars, t, valid) - 1.0)) if w.sum() > 0 else 0.0
    close = level * (1.0 + r)
    o = moved(bars.open)
    h = max(moved(bars.high), o, close)
    lo = min(moved(bars.low), o, close)
    return np.array([o, h, lo, close]), 1.0 + r


def build_from_store(
    store: ParquetStore, cfg: IndexConfig, timeframe: str = "1Day"
) -> tuple[IndexResult, Path]:
    """Read the constituents from ``store``, build the index and store it under ``raw/index``."""
    symbols = cfg.symbols()
    frames = {}
    unknown = []
    for s in symbols:
        try:
            frames[s] = store.read(s, timeframe)
        except SymbolNotFound:
            unknown.append(s)
    if unknown:
        raise DataError(
            f"index {cfg.name}: {', '.join(unknown)} not in the store ({timeframe}); "
            f"download or import them first (btml data download {' '.join(unknown)})"
        )
    result = build_index(frames, cfg, timeframe)
    return result, store.write(result.frame, merge=False)
