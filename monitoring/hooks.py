"""The strategy's side of the monitor: backtrader objects turned into the monitor's hooks.

``MLSignalStrategy(monitor=SessionMonitor(...))`` builds a :class:`StrategyWatch` and calls it
at each step; without a monitor it calls nothing (backtests pay nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from monitoring.monitor import SessionMonitor
from serving.signal import Signal


def _direction(sig: Signal) -> int:
    down, flat, up = sig.direction
    return -1 if down > max(flat, up) else (1 if up > max(down, flat) else 0)


class StrategyWatch:
    """Reports a strategy's bars, requests, signals, orders and account to ``monitor``;
    ``scale`` maps a raw feature row to the model's scaled one (the drift's inputs)."""

    def __init__(
        self, monitor: SessionMonitor, scale: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> None:
        self.monitor = monitor
        self.scale = scale

    def bar(self, d: Any) -> None:
        """A live bar of data ``d`` (its end: the stamp of a feed stamping at the end, else
        the start plus the bar's length)."""
        t = pd.Timestamp(d.datetime.datetime(0), tz="UTC")
        if getattr(getattr(d, "p", None), "stamp", "start") != "end":
            tf = getattr(d, "_tf", None)
            t = t + (tf.delta if tf is not None else pd.Timedelta(0))
        self.monitor.bar(d._name, t)

    def no_window(self, name: str, windows: Any) -> None:
        """A live bar without a full window: the newest feature row's NaN share."""
        recent = getattr(windows, "recent", {}).get(name)
        if recent is not None and len(recent[1]):
            self.monitor.features_missing(name, recent[1][-1])

    def asked(self, seconds: float, ok: bool, client: Any) -> None:
        breaker = getattr(client, "breaker", None)
        self.monitor.serving(seconds, ok, breaker is not None and breaker.state == "open")

    def signals(self, batch: Sequence[tuple[Any, np.ndarray, Any]], sigs: Sequence[Any]) -> None:
        """One bar's signals (a data without one is skipped); the drift's inputs and
        outputs are sampled every ``drift_stride`` bars."""
        names, dirs, wins, kept = [], [], [], []
        for (d, win, _), sig in zip(batch, sigs, strict=True):
            if sig is not None:
                names.append(d._name)
                dirs.append(_direction(sig))
                wins.append(win)
                kept.append(sig)
        if not names:
            return
        scaled, outputs = None, []
        if self.monitor.drift_due():
            raw = np.stack([w[-1] for w in wins]).astype(np.float64)
            scaled = self.scale(raw) if self.scale is not None else None
            outputs = [{"return_1": float(s.returns[0]) if s.returns else 0.0, "p_up": s.p_up}
                       for s in kept]  # fmt: skip
        self.monitor.signals(names, dirs, scaled, outputs)

    def order(self, order: Any) -> None:
        self.monitor.order(str(order.getstatusname()).lower())

    def account(self, equity: float, daily_loss: float, drawdown: float) -> None:
        self.monitor.account(equity, daily_loss, drawdown)

    def evaluate(self) -> None:
        self.monitor.evaluate()
