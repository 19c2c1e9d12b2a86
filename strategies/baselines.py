"""Baseline strategies that every ML result is compared against, at the same costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import backtrader as bt

from feeds.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SmaCrossConfig:
    """SMA crossover: long when the fast average is above the slow one, flat otherwise.

    ``target_percent`` is the share of equity put in each symbol when long (split evenly by the
    caller across symbols if wanted).
    """

    fast: int = 10
    slow: int = 30
    target_percent: float = 0.95

    def __post_init__(self) -> None:
        if not self.fast >= 1:
            raise ConfigError(f"fast must be >= 1, got {self.fast}")
        if not self.fast < self.slow:
            raise ConfigError(f"slow must be > fast ({self.fast}), got {self.slow}")
        if not 0 < self.target_percent <= 1:
            raise ConfigError(f"target_percent must be in (0, 1], got {self.target_percent}")

    @property
    def warmup(self) -> int:
        """Bars needed before the first signal."""
        return self.slow


class SmaCross(bt.Strategy):  # type: ignore[misc]
    """Long/flat SMA crossover over every data; orders fill at the next bar's open."""

    params = (("config", SmaCrossConfig()),)

    def __init__(self) -> None:
        cfg: SmaCrossConfig = self.p.config
        self.cross = {
            d: bt.indicators.CrossOver(
                bt.indicators.SMA(d.close, period=cfg.fast),
                bt.indicators.SMA(d.close, period=cfg.slow),
            )
            for d in self.datas
        }

    def next(self) -> None:
        cfg: SmaCrossConfig = self.p.config
        share = cfg.target_percent / len(self.datas)
        for d, cross in self.cross.items():
            if cross[0] > 0:
                self.order_target_percent(data=d, target=share)
            elif cross[0] < 0 and self.getposition(d).size:
                self.order_target_percent(data=d, target=0.0)


class BuyAndHold(bt.Strategy):  # type: ignore[misc]
    """Buy an equal share of every data on the first bar and hold."""

    params = (("target_percent", 0.95),)

    def nextstart(self) -> None:
        share = self.p.target_percent / len(self.datas)
        for d in self.datas:
            self.order_target_percent(data=d, target=share)

    def next(self, **kwargs: Any) -> None:
        pass
