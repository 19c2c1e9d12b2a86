"""``btml backtest``'s work: a model (served or in-process) or a baseline over stored data.

Honest by default: a model is backtested only on its card's test range (never seen in
training, model selection or scaling) unless ``--start`` says otherwise, and a start inside
the training range is refused. Features are computed on the full history (they are causal),
so the first backtest bar already has its warm-up behind it. Each run is saved under
``{store}/backtests/NAME/`` (returns, audit trail, summary) for ``btml tearsheet``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.backtest import BacktestResult, CostConfig, run_backtest
from feeds.errors import ConfigError, DataError
from feeds.store import ParquetStore
from mlmodels.registry import ModelCard, ModelRegistry
from serving.client import InProcessClient, RestClient, SignalClient
from strategies.audit import decisions_frame
from strategies.baselines import BuyAndHold, SmaCross, SmaCrossConfig
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.risk import RiskConfig
from strategies.windows import FeatureWindows

SERVING = ("inprocess", "torchserve")
BASELINES = ("buyhold", "sma")


@dataclass(frozen=True, kw_only=True)
class MLRunConfig:
    """How the ML strategy trades in a ``btml backtest`` run."""

    entry_prob: float = 0.0
    min_edge: float = 0.01
    min_confidence: float = 0.0
    horizon_agreement: int = 2
    allow_short: bool = False
    risk: RiskConfig = field(default_factory=RiskConfig)
    serving_failure: str = "abort"

    def strategy_config(self, client: SignalClient, windows: FeatureWindows) -> MLSignalConfig:
        """The ``MLSignalConfig`` of this run for ``client`` and ``windows``."""
        return MLSignalConfig(
            client=client, windows=windows, entry_prob=self.entry_prob, min_edge=self.min_edge,
            min_confidence=self.min_confidence, horizon_agreement=self.horizon_agreement,
            allow_short=self.allow_short, risk=self.risk, serving_failure=self.serving_failure,
        )  # fmt: skip


def load_frames(
    store: ParquetStore, symbols: list[str], timeframe: str = "1Day"
) -> dict[str, pd.DataFrame]:
    if not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    return {s: store.read(s, timeframe) for s in symbols}


def clip_range(
    frames: Mapping[str, pd.DataFrame], start: Any = None, end: Any = None
) -> dict[str, pd.DataFrame]:
    """Each frame cut to ``[start, end]``; an empty result for every symbol is an error."""
    lo, hi = _utc(start), _utc(end)
    out = {s: f.loc[lo:hi] for s, f in frames.items()}  # type: ignore[misc]
    out = {s: f for s, f in out.items() if len(f)}
    if not out:
        raise DataError(
            f"no bars between {start or 'the start'} and {end or 'the end'} for any symbol"
        )
    return out


def _utc(t: Any) -> pd.Timestamp | None:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def oos_start(card: ModelCard, start: Any, allow_in_sample: bool = False) -> pd.Timestamp:
    """The backtest start: the card's test range by default; refuse a start inside training
    (unless ``allow_in_sample``, for stress runs that flag it)."""
    test = card.date_ranges.get("test")
    train = card.date_ranges.get("train")
    if start is None:
        if not test:
            raise DataError(f"model {card.ref} has no test range in its card; pass --start")
        return pd.Timestamp(test[0])
    ts = _utc(start)
    assert ts is not None
    if train and ts <= pd.Timestamp(train[1]) and not allow_in_sample:
        raise DataError(
            f"--start {ts.date()} is inside {card.ref}'s training range (to {train[1][:10]}); "
            "an in-sample backtest is not honest. Start after the training range."
        )
    return ts


@contextmanager
def signal_client(
    store_path: Path, card: ModelCard, serving: str, log: Callable[[str], None]
) -> Iterator[SignalClient]:
    """In-process, or TorchServe: the running server, else one started for this run."""
    if serving not in SERVING:
        raise ConfigError(f"--serving must be one of {', '.join(SERVING)}, got {serving!r}")
    if serving == "inprocess":
        yield InProcessClient.from_registry(store_path / "models", card.ref, threads=1)
        return
    from serving.archive import archive_name, build_archive
    from serving.server import ServerConfig, read_state, start, stop

    cfg = ServerConfig(home=store_path / "serving")
    running = read_state(cfg)
    started = running is None
    if running is not None and card.version not in running.models.get(card.name, []):
        raise ConfigError(
            f"a TorchServe is already running from {cfg.home} without {card.ref} (it serves "
            f"{_served(running.models)}); stop it (btml serve stop) or start it with this model"
        )
    if started:
        mar = cfg.model_store / archive_name(card.name, card.version)
        if not mar.exists():
            log(f"archiving {card.ref} for TorchServe")
            build_archive(ModelRegistry(store_path / "models"), card.ref, cfg.model_store)
        log("starting TorchServe (127.0.0.1, token auth) and waiting for READY")
        start(cfg, [mar])
    try:
        with RestClient.for_server(cfg.home, card.name, version=card.version) as client:
            yield client
    finally:
        if started:
            stop(cfg)
            log("stopped TorchServe")


def _served(models: Mapping[str, list[int]]) -> str:
    return ", ".join(f"{m}:{v}" for m, vs in models.items() for v in vs) or "no model"


def run_model(
    store_path: Path,
    ref: str,
    frames: Mapping[str, pd.DataFrame],
    *,
    serving: str = "inprocess",
    start: Any = None,
    end: Any = None,
    costs: CostConfig | None = None,
    ml: MLRunConfig | None = None,
    log: Callable[[str], None] = print,
    allow_in_sample: bool = False,
) -> tuple[BacktestResult, ModelCard]:
    """Backtest model ``ref`` on ``frames`` (full history; traded from the OOS start)."""
    ml = ml or MLRunConfig()
    card = ModelRegistry(store_path / "models").card(ref)
    index = None
    if card.index:
        index = ParquetStore(store_path).read(card.index, card.timeframe)
    begin = oos_start(card, start, allow_in_sample)
    windows = FeatureWindows.build(frames, card.features, card.window, index=index)
    traded = clip_range({s: frames[s] for s in windows.symbols}, begin, end)
    log(
        f"backtesting {card.ref} from {begin.date()} ({'test range' if start is None else 'given'})"
    )
    with signal_client(store_path, card, serving, log) as client:
        cfg = ml.strategy_config(client, windows)
        t0 = time.perf_counter()
        res = run_backtest(
            f"ml {card.ref}", traded, MLSignalStrategy, costs=costs,
            strategy_kwargs={"config": cfg},
        )  # fmt: skip
        log(
            f"  {sum(len(f) for f in traded.values())} bars in {time.perf_counter() - t0:.1f} s via {serving}"
        )
    return res, card


def run_baseline(
    name: str, frames: Mapping[str, pd.DataFrame], costs: CostConfig | None = None
) -> BacktestResult:
    if name not in BASELINES:
        raise ConfigError(f"--baseline must be one of {', '.join(BASELINES)}, got {name!r}")
    if name == "buyhold":
        return run_backtest("buy-and-hold", frames, BuyAndHold, costs=costs)
    return run_backtest(
        "sma-cross 10/30",
        frames,
        SmaCross,
        costs=costs,
        strategy_kwargs={"config": SmaCrossConfig()},
    )


def save_run(
    store_path: Path, name: str, results: list[BacktestResult], card: ModelCard | None
) -> Path:
    """Write returns of every result, the ML audit trail and a summary to a run folder."""
    out = store_path / "backtests" / name
    out.mkdir(parents=True, exist_ok=True)
    rets = pd.DataFrame({r.name: r.returns for r in results})
    rets.index.name = "timestamp"
    rets.to_parquet(out / "returns.parquet")
    for r in results:
        audit = getattr(r.strategy, "audit", None)
        if audit:
            decisions_frame(audit).to_parquet(out / "audit.parquet")
    summary = {
        "runs": [
            {"name": r.name, "final_value": r.final_value, **r.stats.as_row()} for r in results
        ],
        "model_card": None if card is None else json.loads(card.to_json()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return out
