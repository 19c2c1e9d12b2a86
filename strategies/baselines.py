"""Baseline strategies that every ML result is compared against, at the same costs.

Both take their config as ``config=`` or its fields as backtrader params, like the ML
strategy: ``cerebro.addstrategy(SmaCross, fast=5, slow=20)`` equals
``cerebro.addstrategy(SmaCross, config=SmaCrossConfig(fast=5, slow=20))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import backtrader as bt

from core.config import DataConfig
from core.errors import ConfigError
from strategies.plugins import config_from_params, config_params, refuse_unknown


def _check_share(target_percent: float) -> None:
    if not 0 < target_percent <= 1:
        raise ConfigError(f"target_percent must be in (0, 1], got {target_percent}")


@dataclass(frozen=True, kw_only=True)
class SmaCrossConfig(DataConfig):
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
        _check_share(self.target_percent)

    @property
    def warmup(self) -> int:
        """Bars needed before the first signal."""
        return self.slow


@dataclass(frozen=True, kw_only=True)
class BuyAndHoldConfig(DataConfig):
    """Buy ``target_percent`` of equity, split evenly over the datas, on the first bar."""

    target_percent: float = 0.95

    def __post_init__(self) -> None:
        _check_share(self.target_percent)


class SmaCross(bt.Strategy):  # type: ignore[misc]
    """Long/flat SMA crossover over every data; orders fill at the next bar's open.

    ``params``: ``config`` (a ``SmaCrossConfig`` or a table) and each of its fields by name.
    """

    params = config_params(SmaCrossConfig)

    def __init__(self, **unknown: Any) -> None:
        refuse_unknown("SmaCross", unknown, self.p._getkeys())
        self.cfg = cfg = config_from_params(SmaCrossConfig, self.p, "SmaCross")
        self.cross = {
            d: bt.indicators.CrossOver(
                bt.indicators.SMA(d.close, period=cfg.fast),
                bt.indicators.SMA(d.close, period=cfg.slow),
            )
            for d in self.datas
        }

    def next(self) -> None:
        share = self.cfg.target_percent / len(self.datas)
        for d, cross in self.cross.items():
            if cross[0] > 0:
                self.order_target_percent(data=d, target=share)
            elif cross[0] < 0 and self.getposition(d).size:
                self.order_target_percent(data=d, target=0.0)


class BuyAndHold(bt.Strategy):  # type: ignore[misc]
    """Buy an equal share of every data on the first bar and hold.

    ``params``: ``config`` (a ``BuyAndHoldConfig`` or a table) and ``target_percent``.
    """

    params = config_params(BuyAndHoldConfig)

    def __init__(self, **unknown: Any) -> None:
        refuse_unknown("BuyAndHold", unknown, self.p._getkeys())
        self.cfg = config_from_params(BuyAndHoldConfig, self.p, "BuyAndHold")

    def nextstart(self) -> None:
        share = self.cfg.target_percent / len(self.datas)
        for d in self.datas:
            self.order_target_percent(data=d, target=share)

    def next(self, **kwargs: Any) -> None:
        pass
