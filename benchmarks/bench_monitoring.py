"""Monitoring overhead: the ML strategy with and without a session monitor, in one run.

Run: .venv/bin/python benchmarks/bench_monitoring.py [--symbols 3 20] [--bars 1000] [--rounds 3]

The same backtest (``tiny``, seeded weights, in-process, one request per bar as a live session
runs; in-process and through TorchServe) is timed with ``monitor=None`` and with a ``SessionMonitor`` (the shipped rules, a drift
reference over every feature, outputs to the log only), interleaved ``--rounds`` times. Two
measures of the monitor's share of the bar's processing time: the difference of the median
wall times (noisy: other jobs share the cores), and the time spent inside the monitor's hooks
themselves, clocked call by call. A backtest's feeds are not live, so the per-bar ``bar`` hook
(one call per symbol and bar in a session) is timed apart and added to both. The share is
given of the backtest's bar and of a live session's bar, which also recomputes each symbol's
features over its last 1,000 bars (``LiveFeatureWindows``; that recompute is timed here and
added). Goal: under 2 % of the live bar. Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_backtest import ML_CONFIG, serve_tiny, timed  # noqa: E402

from feeds.sources.synthetic import SyntheticConfig, generate_market  # noqa: E402
from mlmodels.features import FEATURES  # noqa: E402
from monitoring.alerts import load_rules  # noqa: E402
from monitoring.drift import reference  # noqa: E402
from monitoring.hooks import StrategyWatch  # noqa: E402
from monitoring.monitor import MonitorConfig, SessionMonitor  # noqa: E402
from monitoring.outputs import log_event  # noqa: E402
from serving.client import InProcessClient, RestClient  # noqa: E402
from serving.server import stop  # noqa: E402
from strategies.ml_signal import MLSignalStrategy  # noqa: E402
from strategies.windows import FeatureWindows  # noqa: E402


def monitor(names: list[str]) -> SessionMonitor:
    rng = np.random.default_rng(0)
    ref = reference(rng.normal(size=(5000, len(names))), names,
                    {"return_1": rng.normal(size=1000), "p_up": rng.uniform(size=1000)})  # fmt: skip
    cfg = MonitorConfig(interval=60.0, market_open=lambda ts, sym: True, max_daily_loss=0.03,
                        max_drawdown=0.25, drift=ref, features=tuple(names),
                        trained_at=pd.Timestamp("2026-01-01", tz="UTC"))  # fmt: skip
    return SessionMonitor(cfg, load_rules(), [log_event])


def bar_hook_seconds(m: SessionMonitor, calls: int = 20_000) -> float:
    """Seconds per ``bar`` hook call."""
    t0 = pd.Timestamp("2026-03-02 14:30", tz="UTC")
    t = time.perf_counter()
    for i in range(calls):
        m.bar("AAPL", t0 + pd.Timedelta(minutes=i))
    return (time.perf_counter() - t) / calls


class TimedWatch(StrategyWatch):
    """The strategy's watch, clocking the time spent in every hook."""

    spent = 0.0

    def _timed(name: str):  # type: ignore[no-untyped-def]  # noqa: N805
        def call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return getattr(StrategyWatch, name)(self, *args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t

        return call

    account = _timed("account")
    signals = _timed("signals")
    order = _timed("order")
    asked = _timed("asked")
    evaluate = _timed("evaluate")


def live_features_seconds(frame: pd.DataFrame, rounds: int = 20) -> float:
    """Seconds of one live recompute of a symbol's features (its last 1,000 bars)."""
    from mlmodels.features import compute_features

    tail = frame.iloc[-1000:]
    compute_features(tail, None)
    t = time.perf_counter()
    for _ in range(rounds):
        compute_features(tail, None)
    return (time.perf_counter() - t) / rounds


def row(n: int, bars: int, rounds: int, client: object, names: list[str], how: str) -> str:
    frames = generate_market(SyntheticConfig(n_symbols=n, n_bars=bars, seed=1))
    windows = FeatureWindows.build(frames, names, 60)
    off, on, inside = [], [], []
    decided = 0
    for _ in range(rounds):
        t, res = timed(frames, MLSignalStrategy, config=ML_CONFIG, client=client, windows=windows)
        off.append(t)
        decided = len({d.timestamp for d in res.strategy.audit})
        watch = TimedWatch(monitor(names), lambda x: x)
        on.append(timed(frames, MLSignalStrategy, config=ML_CONFIG, client=client,
                        windows=windows, monitor=watch)[0])  # fmt: skip
        inside.append(watch.spent)
    a, b, c = statistics.median(off), statistics.median(on), statistics.median(inside)
    hook = bar_hook_seconds(monitor(names)) * n * decided
    live = a + live_features_seconds(next(iter(frames.values()))) * n * decided
    wall, clocked, of_live = (b - a + hook) / a, (c + hook) / a, (c + hook) / live
    return (
        f"| {how} | {n} | {decided:,} | {a:.2f} s | {b:.2f} s ({wall * 100:+.1f} %) | "
        f"{(c + hook) * 1000:.0f} ms ({(c + hook) / decided * 1e6:.0f} us a bar) | "
        f"{clocked * 100:.2f} % | {of_live * 100:.2f} % "
        f"({'met' if of_live < 0.02 else 'NOT met'}) |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--symbols", type=int, nargs="+", default=[3, 20])
    ap.add_argument("--bars", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = [f.name for f in FEATURES[:51]]
    with tempfile.TemporaryDirectory() as tmp:
        reg, card, cfg = serve_tiny(Path(tmp), 60)  # registers tiny:1 and serves it
        try:
            clients = {"in-process": InProcessClient.from_registry(reg.root, card.ref, threads=1),
                       "TorchServe": RestClient.for_server(cfg.home, "tiny")}  # fmt: skip
            print("| model | symbols | bars decided | without monitor | with monitor (wall "
                  "difference) | in the monitor's hooks | share of the backtest's bar | "
                  "share of a live bar |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|")
            for how, client in clients.items():
                for n in args.symbols:
                    print(row(n, args.bars, args.rounds, client, names, how), flush=True)
        finally:
            stop(cfg)


if __name__ == "__main__":
    main()
