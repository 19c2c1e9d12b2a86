"""``btml trade``'s work: the backtested ML strategy, unchanged, on Alpaca paper or live.

The same ``MLSignalStrategy`` and risk rules as ``btml backtest``; only the broker (the
journaled ``AlpacaBroker``), the feeds (live bars after a history backfill, one multiplexed
stream) and the feature windows (recomputed as bars arrive) differ. The serving-failure policy
defaults to ``hold``: when the model server fails, no new entries, exits still allowed.

Every session is a run of kind ``session`` in the run registry: its parameters (the request,
never a key or token), the model's files as inputs, and on every exit the orders journaled,
the fills, and the account's equity. Ctrl-C leaves it ``cancelled``, a session that dies ``failed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import backtrader as bt
import pandas as pd

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.reconcile import ReconcileReport, reconcile
from brokers.alpaca.rest import TradingAPI
from brokers.alpaca.store import AlpacaStore, check_mode
from core.errors import ConfigError, SymbolNotFound
from feeds.live_index import LiveIndex, stored_config
from feeds.store import ParquetStore
from feeds.timeframes import get_timeframe
from mlmodels.registry import ModelCard, ModelRegistry
from strategies.ml_signal import MLSignalStrategy
from strategies.shadow import SHADOW_FILE, ShadowScorer
from strategies.windows import LiveFeatureWindows, card_module
from workflows.backtest import SERVING, MLRunConfig, served_client, signal_client
from workflows.runs import Run, RunRegistry
from workflows.runs_info import to_jsonable
from workflows.session_monitor import check_monitoring, session_monitor
from workflows.train import link_training_run, model_inputs


class SessionLimit(bt.Analyzer):  # type: ignore[misc]
    """Ends the run after ``bars`` live bars of the first data (a session length)."""

    params = (("bars", None),)

    def start(self) -> None:
        self.live_bars = 0

    def next(self) -> None:
        data = self.strategy.datas[0]
        if getattr(data, "_laststatus", None) == data.LIVE:
            self.live_bars += 1
        if self.p.bars is not None and self.live_bars >= self.p.bars:
            self.strategy.env.runstop()


def build_live_cerebro(
    store: AlpacaStore,
    symbols: Sequence[str],
    windows: LiveFeatureWindows,
    *,
    timeframe: str = "1m",
    feed_kwargs: dict[str, Any] | None = None,
) -> bt.Cerebro:
    """A Cerebro with the store's broker and one live feed per symbol (history first)."""
    if not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.setbroker(store.getbroker())
    for symbol in symbols:
        cerebro.adddata(
            store.getdata(symbol, timeframe=timeframe, backfill_bars=windows.history,
                          **(feed_kwargs or {}))
        )  # fmt: skip
    return cerebro


@dataclass(frozen=True)
class SessionPlan:
    """A checked trading request: the model, where and how to trade it."""

    card: ModelCard
    symbols: tuple[str, ...]
    config: AlpacaConfig
    timeframe: str
    serving: str
    ml: MLRunConfig
    adopt_positions: bool = False
    feed_kwargs: dict[str, Any] | None = None
    bars: int | None = None
    alert_rules: str | None = None
    metrics_port: int | None = None
    monitor_clock: str | None = None  # "bars": time by the newest bar (a replay); else wall time
    shadow: ModelCard | None = None  # a challenger scored beside the model, never traded
    serving_deadline: float | None = None  # seconds per TorchServe call (None: half a bar, <= 10)

    def deadline(self) -> float:
        """Each TorchServe call's budget, retries included: shorter than a bar."""
        if self.serving_deadline is not None:
            return self.serving_deadline
        try:
            bar = get_timeframe(self.timeframe).delta.total_seconds()
        except ConfigError:  # the live feed names it otherwise: the client's default
            return 10.0
        return min(10.0, bar / 2)

    def params(self) -> dict[str, Any]:
        """The run's parameters: the request without a secret (no keys; URLs without user
        info, query or fragment, where a password or token could hide)."""
        alpaca = {k: _without_credentials(v) for k, v in self.config.to_dict().items()}
        params = {"model": self.card.ref, "symbols": list(self.symbols), "mode": self.config.mode,
                  "timeframe": self.timeframe, "serving": self.serving, "ml": self.ml.to_dict(),
                  "adopt_positions": self.adopt_positions, "feed": self.feed_kwargs or {},
                  "bars": self.bars, "alpaca": alpaca, "alert_rules": self.alert_rules,
                  "metrics_port": self.metrics_port,
                  "shadow": self.shadow.ref if self.shadow else None,
                  "serving_deadline": self.deadline()}  # fmt: skip
        keys = (self.config.key_id, self.config.secret_key)
        return _drop_secrets(to_jsonable(params, "params"), keys)


@dataclass(frozen=True)
class SessionResult:
    """A finished session: its run and the strategy (its ``audit`` holds every decision)."""

    run_id: str
    run_dir: Path
    strategy: Any


def plan_session(
    store_path: Path,
    ref: str,
    symbols: Sequence[str],
    config: AlpacaConfig,
    *,
    timeframe: str = "1m",
    serving: str = "inprocess",
    ml: MLRunConfig | None = None,
    **options: Any,
) -> SessionPlan:
    """Check the request (read-only: nothing is sent, journaled or recorded); ``options``
    are the plan's other fields (adopt_positions, feed_kwargs, bars, shadow: a model
    reference to score in shadow beside ``ref``)."""
    if not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    if serving not in SERVING:
        raise ConfigError(f"--serving must be one of {', '.join(SERVING)}, got {serving!r}")
    check_monitoring(options.get("alert_rules"), options.get("metrics_port"))
    deadline = options.get("serving_deadline")
    if deadline is not None and not 0 < deadline <= 3600:
        raise ConfigError(f"--serving-deadline must be in (0, 3600] seconds, got {deadline}")
    card = ModelRegistry(store_path / "models").card(ref)
    if card.index:
        check_live_index(store_path, card, timeframe)
    card_module(card, store_path / "models")  # a missing or altered features module: refused here
    ml = ml or MLRunConfig(serving_failure="hold")
    if ml.inference != "per-bar":
        raise ConfigError(
            "a live session scores each bar as it arrives: inference='batched' is for "
            "backtests; use per-bar"
        )
    shadow = options.pop("shadow", None)
    shadow_card = check_shadow(store_path, card, shadow) if shadow else None
    return SessionPlan(card, tuple(symbols), config, timeframe, serving, ml, **options,
                       shadow=shadow_card)  # fmt: skip


def check_live_index(store_path: Path, card: ModelCard, timeframe: str) -> None:
    """A model read with an index needs that index stored at the session's bar size with its
    build settings, to continue it live from its constituents (:mod:`feeds.live_index`)."""
    tf = get_timeframe(timeframe).name
    try:
        stored = ParquetStore(store_path).read(str(card.index), tf)
    except SymbolNotFound:
        raise ConfigError(
            f"{card.ref} reads index {card.index}, which is not stored at {tf} (the session's "
            f"bars); build it at {tf} with `btml index build {card.index} --timeframe {tf}`"
        ) from None
    stored_config(stored, str(card.index))


def check_shadow(store_path: Path, card: ModelCard, ref: str) -> ModelCard:
    """The challenger's card, when it reads the same windows as ``card`` (else refused)."""
    from mlmodels.ensemble import feature_difference

    shadow = ModelRegistry(store_path / "models").card(ref)
    if shadow.ref == card.ref:
        raise ConfigError(f"--shadow {ref} is the traded model itself; name another version")
    if shadow.streaming or card.streaming:
        which = shadow.ref if shadow.streaming else card.ref
        raise ConfigError(f"{which} is a streaming preset: shadow scoring compares windowed models")
    if shadow.features != card.features:
        raise ConfigError(f"--shadow: {feature_difference(shadow, card)}; both must read the same")
    for field in ("window", "timeframe", "index", "feature_module"):
        a, b = getattr(shadow, field), getattr(card, field)
        if a != b:
            raise ConfigError(
                f"--shadow {shadow.ref} has {field} {str(a)[:60]}, {card.ref} {str(b)[:60]}: "
                "a challenger is scored on the traded model's windows, so these must agree"
            )
    return shadow


def run_live(
    store_path: Path,
    ref: str,
    symbols: Sequence[str],
    config: AlpacaConfig,
    *,
    log: Callable[[str], None] = print,
    db_url: str | None = None,
    **options: Any,
) -> SessionResult:
    """Trade model ``ref`` on ``symbols`` for ``bars`` live bars (None: until the feeds end or
    Ctrl-C), recorded as a run of kind ``session``; ``options`` are :func:`plan_session`'s
    (timeframe, serving, ml, adopt_positions, feed_kwargs, bars). The run ends ``ok``,
    ``failed`` when the session dies (the error is raised), or ``cancelled`` on Ctrl-C
    (``KeyboardInterrupt`` is raised); its metrics (orders, fills, equity) are logged on
    every exit. A refused request raises before anything is recorded."""
    plan = plan_session(store_path, ref, symbols, config, **options)
    inputs = model_inputs(store_path, plan.card)
    with (
        RunRegistry(store_path, db_url) as registry,
        registry.start("session", plan.params(), inputs=inputs) as run,
    ):
        log(f"session run {run.id}")
        link_training_run(run, plan.card, log)
        strat = _trade(store_path, plan, run, log)
    return SessionResult(run.id, run.dir, strat)


def _trade(store_path: Path, plan: SessionPlan, run: Run, log: Callable[[str], None]) -> Any:
    """Run the live Cerebro; the session's metrics go to ``run`` however it ends."""
    card, ml, bars = plan.card, plan.ml, plan.bars
    store = AlpacaStore(plan.config, adopt_positions=plan.adopt_positions)
    live_index = None
    try:
        if card.index:  # the synthetic index continued bar by bar from its constituents
            live_index = LiveIndex.from_store(
                ParquetStore(store_path), card.index, get_timeframe(plan.timeframe).name,
                store.hub, deadline_s=plan.deadline(),
            )  # fmt: skip
            live_index.start()
            log(f"index {card.index}: continued live from {len(live_index.symbols)} "
                "constituents' bars")  # fmt: skip
        windows = LiveFeatureWindows.from_card(card, store_path / "models", index=live_index)
        cerebro = build_live_cerebro(
            store, plan.symbols, windows, timeframe=plan.timeframe, feed_kwargs=plan.feed_kwargs
        )
        watching = session_monitor(
            store_path, card, plan.symbols, plan.timeframe, ml.risk, run.id, store,
            alert_rules=plan.alert_rules, metrics_port=plan.metrics_port,
            clock=plan.monitor_clock or time.time,
        )  # fmt: skip
        also = (plan.shadow,) if plan.shadow else ()
        with (
            signal_client(
                store_path, card, plan.serving, log, also=also, deadline_s=plan.deadline()
            ) as client,
            watching as watch,
            _shadow(store_path, plan, run, log) as shadow,
        ):
            if plan.metrics_port is not None:
                log(f"metrics: http://127.0.0.1:{plan.metrics_port}/metrics")
            cerebro.addstrategy(
                MLSignalStrategy, config=ml.strategy_config(), client=client, windows=windows,
                model=card.ref, store=str(store_path), monitor=watch, shadow=shadow,
            )  # fmt: skip
            cerebro.addanalyzer(SessionLimit, bars=bars)
            log(f"trading {card.ref} on {', '.join(plan.symbols)} ({plan.config.mode}, "
                f"{plan.timeframe} bars)")  # fmt: skip
            since = datetime.now(UTC)
            try:
                strat = cerebro.run()[0]
            except KeyboardInterrupt:
                log("interrupted: open orders stay at Alpaca and in the journal")
                raise
            finally:
                run.log_metrics(session_metrics(store, since))
                run.log_metrics({"alerts": len(watch.monitor.events),
                                 "alerts_active": watch.monitor.active()})  # fmt: skip
                save_session(run, getattr(cerebro, "runningstrats", []), plan.timeframe)
        run.log_metrics({"decisions": len(strat.audit)})
        return strat
    finally:
        if live_index is not None:
            live_index.stop()
            live_index.frame.to_parquet(run.add_artifact(INDEX_FILE))  # the report replays it
            run.log_metrics({"index_bars_carried": len(live_index.flags),
                             "index_bars_dropped": live_index.dropped})  # fmt: skip
        store.close()


#: What a session keeps for ``btml trade report`` (:mod:`workflows.trade_report`).
BARS_FILE, DECISIONS_FILE, INDEX_FILE = "bars.parquet", "decisions.parquet", "index.parquet"


def save_session(run: Run, strategies: Sequence[Any], timeframe: str) -> None:
    """The session's inputs and decisions in its run folder, however it ended: every bar its
    feeds held (history and live, start-stamped as stored bars; ``symbol`` a column) and
    every decision (``strategies.audit.decisions_frame``, stamped at the bar's close)."""
    try:
        _save_session(run, strategies)
    except Exception as err:  # never masks how the session ended
        logging.getLogger(__name__).warning("the session's bars and decisions not kept: %s", err)


def _save_session(run: Run, strategies: Sequence[Any]) -> None:
    from strategies.audit import decisions_frame
    from strategies.windows import bars_frame

    if not strategies:
        return
    strat = strategies[0]
    parts = []
    for d in strat.datas:
        if len(d):
            parts.append(bars_frame(d, len(d)).assign(symbol=d._name))
    if parts:
        bars = pd.concat(parts)
        bars.attrs = {}
        bars.to_parquet(run.add_artifact(BARS_FILE))
    decisions = decisions_frame(getattr(strat, "audit", []))
    if len(decisions):
        decisions.drop(columns=["outcomes"], errors="ignore").to_parquet(
            run.add_artifact(DECISIONS_FILE)
        )


@contextmanager
def _shadow(
    store_path: Path, plan: SessionPlan, run: Run, log: Callable[[str], None]
) -> Iterator[ShadowScorer | None]:
    """The plan's challenger scored in shadow into the run's ``shadow.jsonl`` (None: none);
    its counts go to the run's metrics however the session ends."""
    if plan.shadow is None:
        yield None
        return
    client = served_client(store_path, plan.shadow, plan.serving, plan.deadline())
    scorer = ShadowScorer(client, run.dir / SHADOW_FILE)
    log(f"shadow: {plan.shadow.ref} scored beside {plan.card.ref}, never traded")
    try:
        yield scorer
    finally:
        run.log_metrics(scorer.close())
        client.close()


def session_metrics(store: AlpacaStore, since: datetime) -> dict[str, Any]:
    """What a session did, from the journal: the orders this strategy journaled since
    ``since`` (those Alpaca rejected among them), their executions (fills) and the orders
    with a fill; and the account's equity at the start and at its last read (None when it
    was never read) and a trading halt, from the broker."""
    journal, broker = store.journal, store.getbroker()
    orders = [o for o in journal.orders() if o.created_at >= since
              and o.strategy == store.config.strategy and not o.external]  # fmt: skip
    ids = {o.client_order_id for o in orders}
    read = bool(broker.startingvalue or broker.value)
    return {
        "orders": len(orders),
        "rejected": sum(o.status == "rejected" for o in orders),
        "filled_orders": sum(o.filled_qty > 0 for o in orders),
        "fills": sum(f.client_order_id in ids for f in journal.fills()),
        "starting_equity": broker.startingvalue if read else None,
        "final_equity": broker.value if read else None,
        "halted": broker.halted,
    }


def _without_credentials(value: Any) -> Any:
    """A URL without user info, query or fragment; other values as they are."""
    if not isinstance(value, str) or "://" not in value:
        return value
    parts = urlsplit(value)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _drop_secrets(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` without any string (or mapping entry) that contains one of ``secrets``."""
    if isinstance(value, dict):
        return {k: _drop_secrets(v, secrets) for k, v in value.items()
                if not _has_secret(v, secrets) or isinstance(v, dict | list)}  # fmt: skip
    if isinstance(value, list):
        return [_drop_secrets(v, secrets) for v in value if not _has_secret(v, secrets)]
    return value


def _has_secret(value: Any, secrets: Sequence[str]) -> bool:
    return isinstance(value, str) and any(s and s in value for s in secrets)


def trade_status(config: AlpacaConfig) -> ReconcileReport:
    """Compare the journal with the account without writing to either (safe beside a running
    session); raises ``PositionMismatch`` listing the differences, and a broker fault
    (``BrokerUnavailable``, or ``BrokerProtocolError`` for an answer outside the schema)
    naming the endpoint."""
    import json

    from brokers.alpaca.journal import Journal
    from brokers.alpaca.store import BASELINE_KEY

    api = TradingAPI(config)
    check_mode(api.account(), config)
    with Journal(config.journal) as journal:
        baseline = json.loads(journal.meta(BASELINE_KEY) or "{}")
        return reconcile(api, journal, tolerance=config.position_tolerance, baseline=baseline,
                         read_only=True)  # fmt: skip
