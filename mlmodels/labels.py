"""Labels for every head, computed from the future and never fed back into features.

For a bar ``t`` with open ``O``, close ``C``, low ``L`` and per-bar log returns
``g_s = log(C_s / C_{s-1})``, a forward return over ``h`` bars is measured from one of two
places (:class:`LabelConfig`, one choice per head group):

* ``close``: ``log(C_{t+h} / C_t)``, from the close the features were computed on;
* ``next_open``: ``log(O_{t+1+h} / O_{t+1})``, entered at the next bar's open (where the
  strategy's order made at bar ``t`` fills) and exited at the open ``h`` bars later.

The two head groups:

* price heads ``ret_h`` (h = 1, 4, 24): ``price_from``, ``close`` by default (the market's own
  close-to-close returns, what ``Signal.returns`` reports);
* trading heads ``direction``, ``action``, ``size`` and ``confidence``: ``trading_from``,
  ``next_open`` by default, so they learn the trade the strategy can actually make. Below,
  ``r_h`` is the forward return of the trading heads' choice.

The labels:

* ``ret_h``: the price heads' forward log return.
* ``sigma``: the causal scale ``std(g_{t-19..t})`` (20 bars up to ``t``), used by the next two.
* ``direction`` (0 down, 1 flat, 2 up): the sign of ``r_{hd}``, flat inside the dead zone
  ``|r_{hd}| <= dead_zone * sigma * sqrt(hd)`` (``hd`` = ``direction_horizon``).
* ``action`` (0 sell, 1 hold, 2 buy): ``r_{hp}`` net of the round-trip cost ``cost``: buy
  when ``r_{hp} > cost``, sell when ``r_{hp} < -cost``, else hold (``hp`` = ``position_horizon``).
* ``size`` in [0, 1]: ``min((|r_{hp}| - cost)^+ / (2 * sigma * sqrt(hp)), 1)``; 0 on hold.
* ``volatility``: realised volatility over the next 24 bars, ``std(g_{t+1..t+24})``.
* ``risk``: maximum adverse excursion of a long over the next 24 bars,
  ``max(0, 1 - min(L_{t+1..t+24}) / C_t)``.
* ``confidence`` in [0, 1]: the share of the horizons 1, 4, 24 whose forward return ``r_h``
  has the sign of a non-flat direction label (0 when the direction is flat): how clean the
  move is.

Volatility and risk describe the market over the next bars and do not depend on the choice.
The last :attr:`LabelConfig.lookahead` bars (``max(horizons)``, plus one when a group uses
``next_open``, at least ``risk_horizon``) have no labels (NaN) and are never sampled. Model
cards written before the choice existed load with ``close`` for both groups
(:meth:`LabelConfig.from_card`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError

LABEL_COLUMNS: tuple[str, ...] = (
    "ret_1",
    "ret_4",
    "ret_24",
    "direction",
    "action",
    "size",
    "volatility",
    "risk",
    "confidence",
)
ReturnsFrom = Literal["close", "next_open"]
RETURNS_FROM: tuple[str, ...] = ("close", "next_open")


@dataclass(frozen=True, kw_only=True)
class LabelConfig(DataConfig):
    """Label definitions (horizons in bars); ``price_from`` and ``trading_from`` say where the
    price heads' and the trading heads' forward returns are measured from (module docstring)."""

    horizons: tuple[int, int, int] = (1, 4, 24)
    direction_horizon: int = 1
    position_horizon: int = 4
    dead_zone: float = 0.5
    cost: float = 0.004
    vol_window: int = 20
    risk_horizon: int = 24
    price_from: ReturnsFrom = "close"
    trading_from: ReturnsFrom = "next_open"

    def __post_init__(self) -> None:
        for name in ("price_from", "trading_from"):
            if getattr(self, name) not in RETURNS_FROM:
                raise ConfigError(
                    f"{name} must be 'close' or 'next_open', got {getattr(self, name)!r}"
                )
        if len(self.horizons) != 3 or any(h < 1 for h in self.horizons):
            raise ConfigError(f"horizons must be three positive bar counts, got {self.horizons}")
        if (
            self.direction_horizon not in self.horizons
            or self.position_horizon not in self.horizons
        ):
            raise ConfigError("direction_horizon and position_horizon must be among horizons")
        if not 0 <= self.dead_zone <= 5:
            raise ConfigError(f"dead_zone must be in [0, 5], got {self.dead_zone}")
        if not 0 <= self.cost < 0.1:
            raise ConfigError(f"cost must be in [0, 0.1), got {self.cost}")

    @property
    def lookahead(self) -> int:
        """Bars after ``t`` that labels at ``t`` read (the purge length for splits): one more
        than the longest horizon when a head group enters at the next open."""
        shift = int("next_open" in (self.price_from, self.trading_from))
        return max(max(self.horizons) + shift, self.risk_horizon)

    @classmethod
    def from_card(cls, labels: Mapping[str, Any]) -> LabelConfig:
        """The label config a model card recorded; a card written before ``price_from`` and
        ``trading_from`` existed trained on close-to-close labels, so those load as ``close``."""
        known = {f.name for f in fields(cls)}
        d: dict[str, Any] = {k: v for k, v in labels.items() if k in known}
        d["horizons"] = tuple(d.get("horizons", (1, 4, 24)))
        d.setdefault("price_from", "close")
        d.setdefault("trading_from", "close")
        return cls(**d)


def _forward_window(x: np.ndarray, n: int, fn: str) -> np.ndarray:
    """``fn`` over ``x[t+1 .. t+n]`` for every t (NaN where the window runs past the end)."""
    out = np.full(len(x), np.nan)
    if len(x) <= n:
        return out
    w = np.lib.stride_tricks.sliding_window_view(x[1:], n)  # w[t] = x[t+1 : t+1+n]
    out[: len(w)] = np.std(w, axis=1, ddof=1) if fn == "std" else np.min(w, axis=1)
    return out


def forward_returns(ohlcv: pd.DataFrame, h: int, start: ReturnsFrom) -> np.ndarray:
    """``log(C_{t+h} / C_t)`` (``start="close"``) or ``log(O_{t+1+h} / O_{t+1})``
    (``"next_open"``) for every bar ``t``; NaN where the exit bar is past the end."""
    if start not in RETURNS_FROM:
        raise ConfigError(f"start must be 'close' or 'next_open', got {start!r}")
    col, shift = ("close", 0) if start == "close" else ("open", 1)
    logp = np.log(ohlcv[col].to_numpy(dtype=np.float64))
    n = len(logp)
    r = np.full(n, np.nan)
    m = n - h - shift  # bars whose exit bar t + shift + h exists
    if m > 0:
        r[:m] = logp[shift + h :] - logp[shift : shift + m]
    return r


def make_labels(ohlcv: pd.DataFrame, cfg: LabelConfig | None = None) -> pd.DataFrame:
    """Compute every label for each bar of ``ohlcv`` (see the module docstring)."""
    cfg = cfg or LabelConfig()
    c = ohlcv["close"].to_numpy(dtype=np.float64)
    low = ohlcv["low"].to_numpy(dtype=np.float64)
    g = np.concatenate([[np.nan], np.diff(np.log(c))])
    n = len(c)
    out = {h: forward_returns(ohlcv, h, cfg.price_from) for h in cfg.horizons}
    trade = (
        out
        if cfg.trading_from == cfg.price_from
        else {h: forward_returns(ohlcv, h, cfg.trading_from) for h in cfg.horizons}
    )
    sigma = pd.Series(g).rolling(cfg.vol_window, min_periods=2).std().to_numpy()
    sigma = np.where(
        np.isfinite(sigma) & (sigma > 0),
        sigma,
        np.nanmedian(sigma) if np.isfinite(sigma).any() else 0.01,
    )
    rd = trade[cfg.direction_horizon]
    band = cfg.dead_zone * sigma * np.sqrt(cfg.direction_horizon)
    direction = np.where(rd > band, 2.0, np.where(rd < -band, 0.0, 1.0))
    rp = trade[cfg.position_horizon]
    action = np.where(rp > cfg.cost, 2.0, np.where(rp < -cfg.cost, 0.0, 1.0))
    size = np.clip((np.abs(rp) - cfg.cost) / (2 * sigma * np.sqrt(cfg.position_horizon)), 0.0, 1.0)
    size = np.where(action == 1.0, 0.0, size)
    sign = direction - 1.0
    agree = sum((np.sign(trade[h]) == sign).astype(float) for h in cfg.horizons) / 3.0
    confidence = np.where(sign == 0, 0.0, agree)
    vol = _forward_window(g, cfg.risk_horizon, "std")
    risk = np.maximum(0.0, 1.0 - _forward_window(low, cfg.risk_horizon, "min") / c)
    labels = pd.DataFrame(
        {
            **{f"ret_{h}": out[h] for h in cfg.horizons},
            "direction": direction,
            "action": action,
            "size": size,
            "volatility": vol,
            "risk": risk,
            "confidence": confidence,
        },
        index=ohlcv.index,
    )
    labels.iloc[max(n - cfg.lookahead, 0) :] = np.nan  # every label needs the full lookahead
    return labels
