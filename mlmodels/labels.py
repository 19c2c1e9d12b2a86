"""Labels for every head, computed from the future and never fed back into features.

For a bar ``t`` with close ``C``, low ``L`` and per-bar log returns ``g_s = log(C_s / C_{s-1})``:

* ``ret_h`` (h = 1, 4, 24): forward log return ``log(C_{t+h} / C_t)``.
* ``sigma``: the causal scale ``std(g_{t-19..t})`` (20 bars up to ``t``), used by the next two.
* ``direction`` (0 down, 1 flat, 2 up): the sign of ``ret_{hd}``, flat inside the dead zone
  ``|ret_{hd}| <= dead_zone * sigma * sqrt(hd)`` (``hd`` = ``direction_horizon``).
* ``action`` (0 sell, 1 hold, 2 buy): ``ret_{hp}`` net of the round-trip cost ``cost``: buy
  when ``ret_{hp} > cost``, sell when ``ret_{hp} < -cost``, else hold (``hp`` = ``position_horizon``).
* ``size`` in [0, 1]: ``min((|ret_{hp}| - cost)^+ / (2 * sigma * sqrt(hp)), 1)``; 0 on hold.
* ``volatility``: realised volatility over the next 24 bars, ``std(g_{t+1..t+24})``.
* ``risk``: maximum adverse excursion of a long over the next 24 bars,
  ``max(0, 1 - min(L_{t+1..t+24}) / C_t)``.
* ``confidence`` in [0, 1]: the share of the horizons 1, 4, 24 whose forward return has the sign
  of a non-flat direction label (0 when the direction is flat): how clean the move is.

The last ``max(horizons)`` bars have no labels (NaN) and are never sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, kw_only=True)
class LabelConfig(DataConfig):
    """Label definitions (horizons in bars)."""

    horizons: tuple[int, int, int] = (1, 4, 24)
    direction_horizon: int = 1
    position_horizon: int = 4
    dead_zone: float = 0.5
    cost: float = 0.004
    vol_window: int = 20
    risk_horizon: int = 24

    def __post_init__(self) -> None:
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
        """Bars after ``t`` that labels at ``t`` read (the purge length for splits)."""
        return max(*self.horizons, self.risk_horizon)


def _forward_window(x: np.ndarray, n: int, fn: str) -> np.ndarray:
    """``fn`` over ``x[t+1 .. t+n]`` for every t (NaN where the window runs past the end)."""
    out = np.full(len(x), np.nan)
    if len(x) <= n:
        return out
    w = np.lib.stride_tricks.sliding_window_view(x[1:], n)  # w[t] = x[t+1 : t+1+n]
    out[: len(w)] = np.std(w, axis=1, ddof=1) if fn == "std" else np.min(w, axis=1)
    return out


def make_labels(ohlcv: pd.DataFrame, cfg: LabelConfig | None = None) -> pd.DataFrame:
    """Compute every label for each bar of ``ohlcv`` (see the module docstring)."""
    cfg = cfg or LabelConfig()
    c = ohlcv["close"].to_numpy(dtype=np.float64)
    low = ohlcv["low"].to_numpy(dtype=np.float64)
    logc = np.log(c)
    g = np.concatenate([[np.nan], np.diff(logc)])
    n = len(c)
    out: dict[str, np.ndarray] = {}
    for h in cfg.horizons:
        r = np.full(n, np.nan)
        r[: n - h] = logc[h:] - logc[: n - h] if n > h else r[:0]
        out[f"ret_{h}"] = r
    sigma = pd.Series(g).rolling(cfg.vol_window, min_periods=2).std().to_numpy()
    sigma = np.where(
        np.isfinite(sigma) & (sigma > 0),
        sigma,
        np.nanmedian(sigma) if np.isfinite(sigma).any() else 0.01,
    )
    rd = out[f"ret_{cfg.direction_horizon}"]
    band = cfg.dead_zone * sigma * np.sqrt(cfg.direction_horizon)
    direction = np.where(rd > band, 2.0, np.where(rd < -band, 0.0, 1.0))
    rp = out[f"ret_{cfg.position_horizon}"]
    action = np.where(rp > cfg.cost, 2.0, np.where(rp < -cfg.cost, 0.0, 1.0))
    size = np.clip((np.abs(rp) - cfg.cost) / (2 * sigma * np.sqrt(cfg.position_horizon)), 0.0, 1.0)
    size = np.where(action == 1.0, 0.0, size)
    sign = direction - 1.0
    agree = sum((np.sign(out[f"ret_{h}"]) == sign).astype(float) for h in cfg.horizons) / 3.0
    confidence = np.where(sign == 0, 0.0, agree)
    vol = _forward_window(g, cfg.risk_horizon, "std")
    risk = np.maximum(0.0, 1.0 - _forward_window(low, cfg.risk_horizon, "min") / c)
    labels = pd.DataFrame(
        {
            **{f"ret_{h}": out[f"ret_{h}"] for h in cfg.horizons},
            "direction": direction,
            "action": action,
            "size": size,
            "volatility": vol,
            "risk": risk,
            "confidence": confidence,
        },
        index=ohlcv.index,
    )
    labels.iloc[n - cfg.lookahead :] = np.nan  # every label needs the full lookahead
    return labels
