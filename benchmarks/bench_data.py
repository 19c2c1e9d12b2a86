"""Data-layer benchmark: store -> backtrader feeds, StoreData vs PandasData, synthetic speed.

Run: .venv/bin/python benchmarks/bench_data.py [--symbols 100] [--bars 2520]
Prints figures measured side by side in this run; record them in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import backtrader as bt

from feeds.btfeeds import StoreData
from feeds.index import IndexConfig, build_index
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from strategies.baselines import SmaCross


def _run(datas: list[bt.feed.DataBase]) -> tuple[float, float]:
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.broker.setcash(1_000_000)
    for d in datas:
        cerebro.adddata(d)
    cerebro.addstrategy(SmaCross)
    t = time.perf_counter()
    cerebro.run()
    return time.perf_counter() - t, cerebro.broker.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--bars", type=int, default=2520)
    ap.add_argument("--index-constituents", type=int, default=500)
    args = ap.parse_args()

    t = time.perf_counter()
    frames = generate_market(SyntheticConfig(n_symbols=args.symbols, n_bars=args.bars, seed=1))
    gen = time.perf_counter() - t
    rows = sum(len(f) for f in frames.values())
    print(f"synthetic generation: {rows} rows in {gen:.3f} s = {rows / gen:,.0f} rows/s")

    with tempfile.TemporaryDirectory() as tmp:
        store = ParquetStore(tmp)
        t = time.perf_counter()
        for f in frames.values():
            store.write(f, merge=False)
        print(f"store write: {len(frames)} files in {time.perf_counter() - t:.3f} s")
        t = time.perf_counter()
        feeds = [StoreData.from_store(store, s) for s in frames]
        load = time.perf_counter() - t
        print(
            f"store -> backtrader feeds: {len(feeds)} symbols x {args.bars} bars in {load:.3f} s (goal < 1 s)"
        )

        read = {s: store.read(s) for s in frames}
        pandas_feeds = [bt.feeds.PandasData(dataname=f, name=s) for s, f in read.items()]
        t_store, v_store = _run(feeds)
        t_pandas, v_pandas = _run(pandas_feeds)
    assert abs(v_store - v_pandas) < 1e-6 * v_pandas, "the two feeds must give the same result"
    n_bars = len(frames) * args.bars
    print(f"SMA crossover, StoreData:  {t_store:.2f} s ({n_bars / t_store:,.0f} bars/s)")
    print(f"SMA crossover, PandasData: {t_pandas:.2f} s ({n_bars / t_pandas:,.0f} bars/s)")
    print(
        f"speed ratio StoreData / PandasData: {t_pandas / t_store:.2f}x (goal >= 0.95); same final value"
    )

    big = generate_market(
        SyntheticConfig(n_symbols=args.index_constituents, n_bars=args.bars, seed=2)
    )
    t = time.perf_counter()
    res = build_index(
        big, IndexConfig(name="BIG", method="equal", constituents=tuple(big), rebalance="Q")
    )
    dt = time.perf_counter() - t
    print(
        f"index build: {len(big)} constituents x {args.bars} bars (equal, quarterly) in {dt:.2f} s; "
        f"{len(res.frame)} index bars"
    )


if __name__ == "__main__":
    main()
