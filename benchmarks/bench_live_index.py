"""The synthetic index, live: the cost of one index bar, continued against rebuilt.

Run: .venv/bin/python benchmarks/bench_live_index.py [--sizes 1500x3 20000x30] [--bars 50]

For each size (history bars x constituents, synthetic minute bars, equal weights rebalanced
monthly), ``LiveIndex`` starts from the history (one whole build), then takes ``--bars`` live
bars through its sinks, closing each (``until``): the chain continued from the newest bar.
Beside it, the whole build over the history and the live bars, which is what closing a bar
would cost if the chain were rebuilt each time. Prints the milliseconds per bar and their
ratio; the last live levels of both are checked equal. Writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from feeds.index import IndexConfig, build_index  # noqa: E402
from feeds.live_index import LiveIndex  # noqa: E402
from feeds.sources.synthetic import SyntheticConfig, generate_market  # noqa: E402


class _Hub:
    """No history to backfill and no stream: the benchmark feeds the sinks itself."""

    def history(self, *_: object) -> pd.DataFrame:
        return pd.DataFrame()

    def subscribe(self, *_: object) -> None:
        return None


def measure(history: int, members: int, bars: int) -> tuple[float, float, float]:
    """(start ms, ms per continued bar, ms per whole rebuild)."""
    market = generate_market(SyntheticConfig(n_symbols=members, n_bars=history + bars, seed=1,
                                             timeframe="1m"))  # fmt: skip
    cfg = IndexConfig(name="I", method="equal", constituents=tuple(market), rebalance="M")
    t0 = time.perf_counter()
    live = LiveIndex(cfg, {s: f.iloc[:history] for s, f in market.items()}, "1m", _Hub())
    start = time.perf_counter() - t0
    times = next(iter(market.values())).index[history:]
    t0 = time.perf_counter()
    for t in times:
        for s, f in market.items():
            live.sinks[s].put(f.loc[[t]])
        live.until(t)
    per_bar = (time.perf_counter() - t0) / len(times)
    t0 = time.perf_counter()
    whole = build_index(market, cfg, "1m").frame
    rebuild = time.perf_counter() - t0
    assert whole["close"].iloc[-1] == live.frame["close"].iloc[-1], "the live index differs"
    return start * 1e3, per_bar * 1e3, rebuild * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1500x3", "20000x30"])
    ap.add_argument("--bars", type=int, default=50)
    args = ap.parse_args()
    print(f"{'history x members':>18} {'start ms':>9} {'per bar ms':>11} {'rebuild ms':>11} "
          f"{'ratio':>7}")  # fmt: skip
    for size in args.sizes:
        history, members = (int(x) for x in size.split("x"))
        start, per_bar, rebuild = measure(history, members, args.bars)
        print(f"{size:>18} {start:9.0f} {per_bar:11.1f} {rebuild:11.0f} "
              f"{rebuild / per_bar:6.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
