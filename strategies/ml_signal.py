"""``MLSignalStrategy``: a backtrader strategy that trades on a served model's signals.

Per timestamp, after the warm-up (feature warm-up plus the model's window, see
``strategies.windows``), the strategy sends ONE batched request covering every data with a new
bar: its feature window and its position state. Each signal becomes a desired weight through
the entry rules and the sizer, then a final target through the configured list of risk rules
(``RiskConfig.rules``, run by ``strategies.risk_rules.apply_rules``); orders go out with
``order_target_percent`` and fill at the next bar's open. Every decision, with the model
version, the raw heads and each rule's outcome, is appended to ``self.audit``
(``strategies.audit.Decision``).

Set up like any backtrader strategy::

    cerebro.addstrategy(MLSignalStrategy, model="tiny:1", store="data_storage",
                        entry_prob=0.55, sizer="fixed")

or with ``config=MLSignalConfig(...)`` (plain values) and the runtime objects beside it,
``client=`` / ``windows=`` (see the class).

Entry rules (``MLSignalConfig.entry_rule``):

* ``direction`` (the default): long when P(up) - P(down) >= ``min_edge``, P(up) >=
  ``entry_prob``, confidence >= ``min_confidence`` and at least ``horizon_agreement`` of the
  predicted returns (1, 4, 24 bars) are positive; short likewise when ``allow_short``. An open
  position is closed when the opposite direction is more probable; otherwise it is held.
* ``return``: long when the price head's expected return (its prediction at the longest
  horizon, the one a position is held for) less ``round_trip_cost`` is at least
  ``min_return`` and above zero, confidence >= ``min_confidence`` and at least
  ``horizon_agreement`` horizons predict a rise; short likewise. An open position is closed
  when the expected return turns against it; otherwise it is held.
* ``auto``: whichever of the two did better on the model's validation split, chosen once
  before the run (``strategies.entry_choice.choose_entry_rule``; ``btml backtest`` does it):
  the strategy itself runs ``direction`` or ``return`` and refuses an unresolved ``auto``.

A broker that trades only the members of a point-in-time universe
(``analyzers.membership_broker``) is asked before each symbol's decision: a non-member gets no
signal request and no decision (the broker closes what it still holds).

Live feeds (``islive()``): decisions start with the first LIVE bar; the backfilled history
only warms the features up (no order is ever placed on a replayed bar).

Serving failures: ``serving_failure="abort"`` (default) stops the run with
``ServingAborted``, never trading on a silent zero signal; ``"hold"`` / ``"flatten"`` apply the
risk rules' serving-failure policy (no new entries; keep or close positions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import backtrader as bt
import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import BtmlError, ConfigError
from serving.client import ServingUnavailable, SignalClient
from serving.signal import Signal
from strategies.audit import Decision
from strategies.batched import DEFAULT_CHUNK, INFERENCE_MODES, BatchedSignals, batched_signals
from strategies.entry_rules import (
    UNRESOLVED_AUTO,
    check_entry_fields,
    desired_weight,
)
from strategies.plugins import PluginSpec, config_from_params, config_params, refuse_unknown
from strategies.risk import DailyLossState, DrawdownState, RiskConfig, RiskInputs
from strategies.risk_rules import RiskRule, apply_rules
from strategies.sizing import Sizer, build_sizer, sizer_spec
from strategies.streamed import LiveStreamSignals, StreamSignals, per_bar_streams
from strategies.windows import FeatureWindows, LiveFeatureWindows

if TYPE_CHECKING:
    from mlmodels.registry import ModelCard
    from monitoring.hooks import StrategyWatch
    from strategies.shadow import ShadowScorer

SERVING_POLICIES = ("abort", "hold", "flatten")
RUNTIME_PARAMS = ("client", "windows", "model", "store", "batched", "monitor", "shadow")
OHLCV = ("open", "high", "low", "close", "volume")


class ServingAborted(BtmlError):
    """The model server failed during a run whose policy is to abort."""


@dataclass(frozen=True, kw_only=True)
class MLSignalConfig(DataConfig):
    """The ML strategy's parameters, plain values checked at construction.

    ``sizer``: a ``strategies.sizing.SIZERS`` entry as a ``PluginSpec``, a name, or a sizer
    object of a registered class (turned into its spec). The runtime objects (the signal
    client, the feature windows) are not part of the config: give them to the strategy beside
    it (``client=``, ``windows=``, or ``model=`` and ``store=``).
    """

    entry_prob: float = 0.0
    min_edge: float = 0.01
    min_confidence: float = 0.0
    horizon_agreement: int = 2
    allow_short: bool = False
    entry_rule: str = "direction"
    min_return: float = 0.0
    round_trip_cost: float = 0.0
    sizer: PluginSpec | str = field(default_factory=lambda: PluginSpec(name="model"))
    risk: RiskConfig = field(default_factory=RiskConfig)
    serving_failure: str = "abort"
    rebalance_band: float = 0.02
    returns_lookback: int = 60
    inference: str = "per-bar"
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizer", sizer_spec(self.sizer))
        if not isinstance(self.risk, RiskConfig):
            raise ConfigError(f"risk must be a RiskConfig, got {type(self.risk).__name__}")
        for name in ("entry_prob", "min_edge", "min_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.horizon_agreement <= 3:
            raise ConfigError(f"horizon_agreement must be 0..3, got {self.horizon_agreement}")
        check_entry_fields(self.entry_rule, self.min_return, self.round_trip_cost)
        if self.serving_failure not in SERVING_POLICIES:
            raise ConfigError(
                f"serving_failure must be one of {', '.join(SERVING_POLICIES)}, "
                f"got {self.serving_failure!r}"
            )
        if not 0 <= self.rebalance_band < 1:
            raise ConfigError(f"rebalance_band must be in [0, 1), got {self.rebalance_band}")
        if self.inference not in INFERENCE_MODES or not 1 <= self.chunk <= 100_000:
            raise ConfigError(
                f"inference must be one of {', '.join(INFERENCE_MODES)} and chunk in "
                f"[1, 100000], got {self.inference!r}, {self.chunk}"
            )


class MLSignalStrategy(bt.Strategy):  # type: ignore[misc]
    """See the module docstring.

    ``params``: ``config`` (an ``MLSignalConfig`` or a table), each ``MLSignalConfig`` field by
    name (``entry_prob=0.55``; it overrides the same field of ``config``), and the runtime
    objects: ``client`` (a ``SignalClient``) and ``windows`` (``FeatureWindows``), or
    ``model="name[:version]"`` with ``store=`` (the store folder holding ``models/``), from
    which an in-process client and the windows (from each feed's frame, or recomputed as live
    bars arrive) are built when not given.
    """

    params = config_params(MLSignalConfig, *RUNTIME_PARAMS)

    def __init__(self, **unknown: Any) -> None:
        refuse_unknown("MLSignalStrategy", unknown, self.p._getkeys())
        self.cfg: MLSignalConfig = config_from_params(MLSignalConfig, self.p, "MLSignalStrategy")
        if self.cfg.entry_rule == "auto":
            raise ConfigError(f"MLSignalStrategy: {UNRESOLVED_AUTO}")
        self.client, self.windows = runtime_objects(self.p, self.datas)
        self.batched: BatchedSignals | StreamSignals | LiveStreamSignals | None = self.p.batched
        if self.batched is None and self.cfg.inference == "batched":
            self.batched = batched_signals(self.client, self.windows, chunk=self.cfg.chunk,
                                           model=self.p.model, store=self.p.store)  # fmt: skip
        elif self.batched is None:  # a streaming preset streams per bar too
            self.batched = per_bar_streams(self.client, self.windows, self.p.model, self.p.store)
        self.sizing: Sizer = build_sizer(PluginSpec.of(self.cfg.sizer, kind="sizer"))
        self.risk_rules: tuple[RiskRule, ...] = self.cfg.risk.build_rules()
        self.audit: list[Decision] = []
        self.serving_failures = 0
        self._seen: dict[Any, int] = {}
        self._pending: dict[Any, Any] = {}
        self._entry: dict[Any, tuple[float, int]] = {}  # data -> (entry price, bar index)
        self._daily = DailyLossState()
        self._drawdown = DrawdownState()
        self._rets: dict[Any, tuple[Any, np.ndarray]] = {}
        self._live: dict[Any, bool] = {}  # live feeds: is the data past its backfill?
        self.watch: StrategyWatch | None = self.p.monitor  # a live session's monitor
        self.shadow: ShadowScorer | None = self.p.shadow  # a challenger scored, never traded

    @property
    def warmup(self) -> int:
        """Bars needed before the first signal: the features' warm-up plus the window."""
        from mlmodels.features import WARMUP

        return WARMUP + self.windows.window

    # -- backtrader hooks -------------------------------------------------------------------
    def notify_order(self, order: Any) -> None:
        if self.watch is not None:
            self.watch.order(order)
        if order.status in (
            order.Completed,
            order.Canceled,
            order.Margin,
            order.Rejected,
            order.Expired,
        ):
            self._pending.pop(order.data, None)

    def notify_data(self, data: Any, status: int, *args: Any, **kwargs: Any) -> None:
        """Live feeds: decide on LIVE bars only, never on the history they backfill."""
        if status in (data.LIVE, data.DELAYED):
            self._live[data] = status == data.LIVE

    def notify_trade(self, trade: Any) -> None:
        if trade.isclosed:
            self._entry.pop(trade.data, None)
        elif trade.justopened:
            self._entry[trade.data] = (float(trade.price), len(trade.data))

    def next(self) -> None:
        now = self.datetime.datetime(0)
        equity = float(self.broker.getvalue())
        day = pd.Timestamp(now).date()
        self._daily = self._daily.update(day, equity, self.cfg.risk)
        self._drawdown = self._drawdown.update(equity, self.cfg.risk)
        if self.watch is not None:
            self.watch.account(equity, self._daily.loss, self._drawdown.drawdown)
        batch = self._collect(now)
        if not batch:
            self.watch.evaluate() if self.watch is not None else None
            return
        signals = self._ask(
            [b[1] for b in batch], [b[2] for b in batch], [b[0] for b in batch], now
        )
        if self.watch is not None:
            self.watch.signals(batch, signals)
            self.watch.evaluate()
        if self.shadow is not None:
            self.shadow.submit([b[1] for b in batch], np.asarray([b[2] for b in batch]),
                               [b[0]._name for b in batch], [b[0].close[0] for b in batch],
                               signals, pd.Timestamp(now, tz="UTC").isoformat())  # fmt: skip
        # one snapshot per bar: orders placed below fill at a later bar, so the weights, the
        # risk state and the time are the same for every decision of this bar
        bar = (self._weights(), self._risk_state(), pd.Timestamp(now, tz="UTC"))
        for (d, _, _), sig in zip(batch, signals, strict=True):
            self._decide(d, sig, bar)

    # -- steps ------------------------------------------------------------------------------
    def _collect(self, now: Any) -> list[tuple[Any, np.ndarray, tuple[float, float, float]]]:
        """Datas with a new bar at ``now`` and a full feature window."""
        out = []
        ts = pd.Timestamp(now, tz="UTC").value
        member = getattr(self.broker, "is_member", None)  # a point-in-time universe's broker
        for d in self.datas:
            n = len(d)
            if self._seen.get(d) == n:
                continue
            self._seen[d] = n
            if d.datetime.datetime(0) != now or (d.islive() and not self._live.get(d)):
                continue
            if member is not None and not member(d):
                continue
            win = self.windows.window_for(d, ts)
            if self.watch is not None and d.islive():
                self.watch.bar(d)
                if win is None:
                    self.watch.no_window(d._name, self.windows)
            if win is not None:
                out.append((d, win, self._position_state(d)))
        return out

    def _position_state(self, d: Any) -> tuple[float, float, float]:
        pos = self.getposition(d)
        if not pos.size:
            return (0.0, 0.0, 0.0)
        weight = pos.size * d.close[0] / max(float(self.broker.getvalue()), 1e-9)
        scaled = max(-1.0, min(1.0, weight / self.cfg.risk.max_position))
        price, bar = self._entry.get(d, (pos.price, len(d)))
        pnl = math.copysign(1.0, pos.size) * math.log(d.close[0] / price) if price > 0 else 0.0
        return (scaled, pnl, float(len(d) - bar))

    def _ask(
        self,
        wins: list[np.ndarray],
        pos: list[tuple[float, float, float]],
        datas: list[Any],
        now: Any,
    ) -> list[Signal | None]:
        stamp = pd.Timestamp(now, tz="UTC")
        names, states = [d._name for d in datas], np.asarray(pos, dtype=np.float32)
        stamps = [stamp.isoformat()] * len(datas)
        began = time.perf_counter()
        try:
            if self.batched is not None:  # the paths scored ahead, the heads now
                out = list(self.batched.predict(names, stamp.value, states, stamps))
            else:
                out = self.client.predict(np.stack(wins), states, symbols=names, timestamps=stamps)
            if self.watch is not None:
                self.watch.asked(time.perf_counter() - began, True, self.client)
            return list(out)
        except ServingUnavailable as err:
            if self.watch is not None:
                self.watch.asked(time.perf_counter() - began, False, self.client)
            self.serving_failures += 1
            if self.cfg.serving_failure == "abort":
                raise ServingAborted(
                    f"model server failed at {now} ({err}); the run is aborted rather than "
                    "trading without signals (set serving_failure='hold' or 'flatten' to go on)"
                ) from err
            return [None] * len(datas)

    def _risk_state(self) -> str:
        states = ["daily-stop"] if self._daily.stopped else []
        if self._drawdown.breached(self.cfg.risk):
            states.append("drawdown")
        return ",".join(states)

    def _weights(self) -> dict[str, float]:
        value = max(float(self.broker.getvalue()), 1e-9)
        return {
            d._name: self.getposition(d).size * d.close[0] / value
            for d in self.datas
            if self.getposition(d).size
        }

    def _returns(self, d: Any) -> np.ndarray:
        """Log returns of the last ``returns_lookback`` bars (computed once per data and bar)."""
        key = (d, len(d))
        cached = self._rets.get(d)
        if cached is not None and cached[0] == key:
            return cached[1]
        n = min(len(d), self.cfg.returns_lookback + 1)
        closes = np.asarray(d.close.get(size=n), dtype=np.float64)
        rets = np.diff(np.log(closes)) if len(closes) > 1 else np.zeros(0)
        self._rets[d] = (key, rets)
        return rets

    def _decide(
        self, d: Any, sig: Signal | None, bar: tuple[dict[str, float], str, pd.Timestamp]
    ) -> None:
        weights, risk_state, stamp = bar
        current = weights.get(d._name, 0.0)
        if sig is None:
            desired = current
        else:
            rets = self._returns(d)
            vol = float(np.std(rets)) if len(rets) > 1 else None
            size = self.sizing.weight(sig, realised_vol=vol or None)
            desired = desired_weight(sig, current, self.cfg, size)
        held = [self.getdatabyname(n) for n in weights if n != d._name]
        inputs = RiskInputs(
            symbol=d._name,
            desired=desired,
            weights=weights,
            returns=self._returns(d),
            held_returns={k._name: self._returns(k) for k in held},
            daily=self._daily,
            drawdown=self._drawdown,
            signal_ok=sig is not None,
            serving_policy=self.cfg.serving_failure,
        )
        target, reason, outcomes = apply_rules(self.risk_rules, inputs)
        self.audit.append(
            Decision(
                timestamp=stamp, symbol=d._name, price=float(d.close[0]),
                signal=sig, position=float(self.getposition(d).size), target=target, reason=reason,
                weight=current, risk_state=risk_state, outcomes=outcomes,
            )
        )  # fmt: skip
        if d in self._pending or abs(target - current) < self.cfg.rebalance_band and target != 0:
            return
        if target == 0 and not self.getposition(d).size:
            return
        # the live broker journals the signal's heads with the order; backtrader keeps it in .info
        self._pending[d] = self.order_target_percent(d, target=target, signal=sig)


# -- the runtime objects ------------------------------------------------------------------------
def runtime_objects(p: Any, datas: Sequence[Any]) -> tuple[SignalClient, FeatureWindows]:
    """The strategy's client and windows: the ``client``/``windows`` params when given, else
    built from ``model`` and ``store``."""
    client, windows = p.client, p.windows
    if client is not None and windows is not None:
        return client, windows
    if p.model is None or p.store is None:
        raise ConfigError(
            "MLSignalStrategy needs a model: pass model='name:version' and store='<store "
            "folder holding models/>', or client=<SignalClient> and windows=<FeatureWindows>"
        )
    from mlmodels.registry import ModelRegistry
    from serving.client import InProcessClient

    root = Path(p.store)
    if client is None:
        client = InProcessClient.from_registry(root / "models", str(p.model))
    if windows is None:
        card = ModelRegistry(root / "models").card(str(p.model))
        windows = feed_windows(datas, card, root)
    return client, windows


def feed_windows(datas: Sequence[Any], card: ModelCard, root: Path) -> FeatureWindows:
    """The model card's feature windows over the feeds: recomputed as bars arrive for live
    feeds, else precomputed from each feed's OHLCV frame (its ``dataname``)."""
    if datas and all(d.islive() for d in datas):
        return LiveFeatureWindows.from_card(card, root / "models")
    frames: dict[str, pd.DataFrame] = {}
    for d in datas:
        frame = getattr(d.p, "dataname", None)
        name = getattr(d, "_name", "")
        if not name:
            raise ConfigError("name every data feed (cerebro.adddata(feed, name='AAPL'))")
        if not (isinstance(frame, pd.DataFrame) and set(OHLCV) <= set(frame.columns)):
            raise ConfigError(
                f"{name}: the feed has no OHLCV frame to compute {card.ref}'s features from; "
                "pass windows=FeatureWindows.from_card(frames, card, models_root)"
            )
        frames[name] = frame
    check_timeframe(frames, card)
    index = None
    if card.index:
        from feeds.store import ParquetStore

        index = ParquetStore(root).read(card.index, card.timeframe)
    return FeatureWindows.from_card(frames, card, root / "models", index=index)


def check_timeframe(frames: Mapping[str, pd.DataFrame], card: ModelCard) -> None:
    """Refuse bars of another size than the model's: its features would be computed on bars
    it never saw, and its index, stored at the card's timeframe, would be read ahead beside
    finer bars (a daily close at the day's first hour; see ``feeds.index_feed``)."""
    from feeds.timeframes import get_timeframe

    want = get_timeframe(card.timeframe).name
    for sym, frame in frames.items():
        tf = frame.attrs.get("timeframe")
        if tf is not None and get_timeframe(str(tf)).name != want:
            raise ConfigError(
                f"{sym}: {tf} bars, but model {card.ref} was trained on {want} bars; "
                f"give --timeframe {want} (or data of that bar size)"
            )
