"""A live session's monitor: what the strategy and the broker report, measured and alerted on.

The strategy calls the hooks as things happen (``bar``, ``serving``, ``signal``, ``order``,
``account``, ``positions``, ``stream``); every hook updates the Prometheus metrics
(:mod:`monitoring.metrics`). :meth:`SessionMonitor.evaluate` turns the measurements into the
alert signals (:data:`monitoring.alerts.SIGNALS`) and runs the rules; it runs after every bar
and on a ticker thread (``tick`` seconds), so stale bars and a dead stream raise their alerts
when no bar comes at all. Events go to every output (log, alerts file, webhooks); a failing
output is logged and never reaches the strategy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from monitoring.alerts import AlertEngine, AlertEvent, RuleSet
from monitoring.drift import DriftTracker
from monitoring.metrics import SessionMetrics

log = logging.getLogger(__name__)

Output = Callable[[AlertEvent], None]
REQUESTS = 20  # model requests the latency percentile and the error ratio are measured over


@dataclass(frozen=True)
class MonitorConfig:
    """``interval``: the bar interval (s); ``market_open(ts, symbol)``: whether bars of
    ``symbol`` are expected at ``ts`` (its lag counts from the later of its newest bar's end
    and its market's opening seen by the monitor, never across a closed market);
    ``max_daily_loss`` / ``max_drawdown``: the risk limits the ratios are measured against;
    ``trained_at``: when the model was trained; ``drift``: the card's drift reference;
    ``features``: the card's feature names (the drift's inputs)."""

    interval: float
    market_open: Callable[[pd.Timestamp, str], bool]
    max_daily_loss: float
    max_drawdown: float
    trained_at: pd.Timestamp | None = None
    drift: dict[str, Any] | None = None
    features: tuple[str, ...] = ()
    drift_every: float = 30.0
    drift_stride: int = 5  # bars between the rows the drift samples


class SessionMonitor:
    """Measures a session and evaluates ``rules`` (module docstring)."""

    def __init__(
        self,
        cfg: MonitorConfig,
        rules: RuleSet,
        outputs: Sequence[Output] = (),
        *,
        metrics: SessionMetrics | None = None,
        clock: Callable[[], float] = time.time,
        webhook_failing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cfg, self.clock = cfg, clock
        self.metrics = metrics or SessionMetrics()
        self.engine = AlertEngine(rules.rules)
        self.outputs = list(outputs)
        self.webhook_failing = webhook_failing
        self.events: list[AlertEvent] = []
        self._lock = threading.RLock()
        self._last_bar: dict[str, float] = {}  # symbol -> epoch seconds of its newest bar's end
        self._opened: dict[str, float] = {}  # symbol -> when its market was first seen open
        self._out_lock = threading.Lock()  # events reach the outputs in the engine's order
        self._requests: deque[tuple[float, bool]] = deque(maxlen=REQUESTS)
        self._breaker = False
        self._mismatch = False
        self._stream: bool | None = None
        self._daily_loss = self._drawdown = 0.0
        self._nan: dict[str, float] = {}
        self._dirs: dict[str, int] = {}
        self._flips: dict[str, deque[bool]] = {}
        self.drift = DriftTracker(cfg.drift)
        self._drift_value: float | None = None
        self.drift_worst = ""  # the input or output drifting most ("features/rsi_14")
        self._drift_at = 0.0
        self._bars_seen = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def bar(self, symbol: str, bar_end: pd.Timestamp) -> None:
        """A live bar of ``symbol`` whose interval ended at ``bar_end``."""
        with self._lock:
            self._last_bar[symbol] = bar_end.timestamp()
            self.metrics.bars.labels(symbol).inc()
            self.metrics.feed_lag.labels(symbol).set(max(0.0, self.clock() - bar_end.timestamp()))

    def serving(self, seconds: float, ok: bool, breaker_open: bool = False) -> None:
        with self._lock:
            self._requests.append((seconds, ok))
            self.metrics.latency.observe(seconds)
            if not ok:
                self.metrics.serving_errors.inc()
            self._breaker = breaker_open
            self.metrics.breaker.set(float(breaker_open))

    def drift_due(self) -> bool:
        """Whether this bar's rows feed the drift (every ``drift_stride`` bars)."""
        self._bars_seen += 1
        return self._bars_seen % self.cfg.drift_stride == 1 or self.cfg.drift_stride == 1

    def signals(
        self,
        symbols: Sequence[str],
        directions: Sequence[int],
        scaled_rows: np.ndarray | None,
        outputs: Sequence[dict[str, float]],
    ) -> None:
        """One bar's signals: each symbol's direction (-1, 0, 1), and on the bars the drift
        samples the scaled feature rows they read ``(N, F)`` and the outputs it watches
        (``return_1``, ``p_up``). A signal read a full window: no NaN in its newest row."""
        with self._lock:
            for sym, direction in zip(symbols, directions, strict=True):
                last = self._dirs.get(sym)
                flipped = last is not None and last != 0 and direction != 0 and last != direction
                self._dirs[sym] = direction
                self._flips.setdefault(sym, deque(maxlen=50)).append(flipped)
                if flipped:
                    self.metrics.flips.labels(sym).inc()
                if self._nan.get(sym) != 0.0:
                    self._nan[sym] = 0.0
                    self.metrics.nan.labels(sym).set(0.0)
            if scaled_rows is not None and self.cfg.features:
                finite = np.isfinite(scaled_rows).all(axis=1)
                self.drift.add_rows(self.cfg.features, scaled_rows[finite])
            for out in outputs:
                for k, v in out.items():
                    self.drift.add("outputs", k, v)

    def features_missing(self, symbol: str, row: np.ndarray) -> None:
        """A bar without a full window: the newest row's NaN share."""
        with self._lock:
            nan = float(np.mean(~np.isfinite(row))) if len(row) else 1.0
            self._nan[symbol] = nan
            self.metrics.nan.labels(symbol).set(nan)

    def order(self, status: str) -> None:
        self.metrics.orders.labels(status).inc()

    def account(self, equity: float, daily_loss: float, drawdown: float) -> None:
        """Equity, the day's loss (a positive fraction) and the drawdown (a negative one)."""
        with self._lock:
            self.metrics.equity.set(equity)
            self.metrics.daily_pnl.set(-daily_loss)
            self.metrics.drawdown.set(drawdown)
            lim_d, lim_dd = self.cfg.max_daily_loss, self.cfg.max_drawdown
            self._daily_loss = daily_loss / lim_d if lim_d > 0 else 0.0
            self._drawdown = -drawdown / lim_dd if lim_dd > 0 else 0.0

    def positions(self, mismatch: bool) -> None:
        with self._lock:
            self._mismatch = mismatch
            self.metrics.mismatch.set(float(mismatch))

    def stream(self, connected: bool) -> None:
        with self._lock:
            self._stream = connected
            self.metrics.stream.set(float(connected))

    # -- evaluation ----------------------------------------------------------------------------
    def newest_bar(self) -> float:
        """The end (epoch seconds) of the newest bar seen, 0 before any: the clock of a
        replayed session, whose bars come faster than their interval."""
        with self._lock:
            return max(self._last_bar.values(), default=0.0)

    def values(self) -> dict[str, float | None]:
        """The alert signals now (None: not measured yet)."""
        now = self.clock()
        with self._lock:
            lag = self._lag(now)
            reqs = list(self._requests)
            age = (
                (now - self.cfg.trained_at.timestamp()) if self.cfg.trained_at is not None else None
            )
            if age is not None:
                self.metrics.model_age.set(age)
            if now - self._drift_at >= self.cfg.drift_every:
                worst = self.drift.worst()
                self._drift_at, self._drift_value = now, None if worst is None else worst[1]
                if worst is not None:
                    self.metrics.drift.set(worst[1])
                    self.drift_worst = worst[0]
            flips = [sum(q) / len(q) for q in self._flips.values() if len(q) >= 10]
            return {
                "feed_lag_bars": lag,
                "stream_connected": None if self._stream is None else float(self._stream),
                "position_mismatch": float(self._mismatch),
                "daily_loss_limit_ratio": self._daily_loss,
                "drawdown_limit_ratio": self._drawdown,
                "serving_p95_seconds": _p95([s for s, _ in reqs]) if reqs else None,
                "serving_error_ratio": (sum(not ok for _, ok in reqs) / len(reqs))
                if reqs
                else None,
                "breaker_open": float(self._breaker),
                "model_age_days": None if age is None else age / 86400.0,
                "feature_nan_ratio": max(self._nan.values()) if self._nan else None,
                "prediction_drift": self._drift_value,
                "signal_flip_ratio": max(flips) if flips else None,
                "webhook_failing": float(self.webhook_failing()),
            }

    def _lag(self, now: float) -> float | None:
        """The largest lag in bars of a symbol whose market is open (None: none is)."""
        if not self._last_bar:
            return None
        stamp = pd.Timestamp(now, unit="s", tz="UTC")
        worst = None
        for sym, t in self._last_bar.items():
            if not self.cfg.market_open(stamp, sym):
                self._opened.pop(sym, None)  # closed: no lag; it counts again from the open
                continue
            since = max(t, self._opened.setdefault(sym, now))
            self.metrics.feed_lag.labels(sym).set(max(0.0, now - since))
            bars = (now - since) / self.cfg.interval
            worst = bars if worst is None else max(worst, bars)
        return worst

    def evaluate(self) -> list[AlertEvent]:
        """Run the rules on :meth:`values`; send and return the events."""
        with self._out_lock:
            return self._evaluate()

    def _evaluate(self) -> list[AlertEvent]:
        with self._lock:
            events = self.engine.evaluate(self.values(), self.clock())
            for e in events:
                self.metrics.alerts.labels(e.rule, e.severity).set(
                    0.0 if e.state == "resolved" else 1.0
                )
                if e.signal == "prediction_drift" and e.state != "resolved":
                    log.warning("drift: the largest is %s", self.drift_worst)
            self.events += events
        for e in events:
            for out in self.outputs:
                try:
                    out(e)
                except Exception as err:  # an output never reaches the strategy
                    log.warning("alert output %s failed: %s", getattr(out, "__name__", out), err)
        return events

    def active(self) -> list[str]:
        with self._lock:
            return sorted(self.engine.active)

    def start(self, tick: float = 5.0, poll: Callable[[], None] | None = None) -> None:
        """Evaluate every ``tick`` seconds on a daemon thread (``poll`` first: read the
        broker's and the stream's state) until :meth:`close`."""

        def run() -> None:
            while not self._stop.wait(tick):
                try:
                    if poll is not None:
                        poll()
                    self.evaluate()
                except Exception as err:
                    log.warning("monitor tick failed: %s", err)

        self._ticker = threading.Thread(target=run, name="btml-monitor", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(2.0)


def _p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(0.95 * len(ranked)) - 1)]
