"""Research benchmark: the figures of the research issue, measured side by side in one run.

Run: .venv/bin/python benchmarks/bench_research.py [--seeds 3] [--trials 20] [--skip-sweep]

1. **Planted signal.** A synthetic market whose returns follow an AR(1) of 0.3 (8 symbols x
   1500 bars, the setting of ``tests/test_training_direction.py``); the ``tiny`` preset is trained
   once per seed. Printed per seed and as a mean: the network's out-of-sample direction accuracy
   against the logistic, LightGBM and majority baselines (the model card's report), its 1-bar
   rank IC and that IC as a share of the oracle's (the rank correlation of the known AR(1)
   forecast, the last bar's return, with the same test labels).
2. **Deflated Sharpe and PBO.** 12 SMA crossovers (fast 1-3 x slow 4-15, no costs) on one
   symbol of a pure random walk and of the same shocks with the plant; the best configuration's
   deflated Sharpe ratio counts all 12 as trials; PBO by CSCV across them.
3. **Sweep executors.** ``btml sweep``'s workflow, ``--trials`` trials of ``tiny`` (2 folds
   each) on the planted market, serial against a process pool against a local Ray runtime
   (2 workers each), wall time; the three must give the same study.

Prints tables; writes only to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from analyzers.backtest import CostConfig, run_backtest
from analyzers.overfitting import deflated_sharpe, sharpe_ratio
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.pipeline import train_on_dataset
from mlmodels.splits import WalkForward, chronological_split
from mlmodels.trainer import TrainConfig
from strategies.baselines import SmaCross, SmaCrossConfig
from workflows.backtest import MLRunConfig
from workflows.executors import ExecutorConfig
from workflows.runs_trials import overfitting
from workflows.sweep import SweepConfig, run_sweep
from workflows.walkforward import WalkForwardConfig

PHI = 0.3


# -- 1. the planted signal -----------------------------------------------------------------------
def oracle_rank_ic(ds: WindowDataset, frames: dict[str, pd.DataFrame], idx: np.ndarray) -> float:
    """Rank IC over samples ``idx`` of the AR(1)'s own forecast (the decision bar's log return,
    times ``PHI > 0``, which does not change ranks) against the dataset's 1-bar label."""
    last = np.empty(len(idx))
    for j, i in enumerate(idx):
        close = frames[ds.symbols[ds.sample_symbol[i]]]["close"]
        pos = close.index.get_loc(ds.times[i])
        last[j] = np.log(close.iloc[pos] / close.iloc[pos - 1])
    return float(spearmanr(last, ds.targets["ret_1"][idx]).statistic)


def planted_seed(seed: int) -> dict[str, float]:
    """Train ``tiny`` on the planted market with training seed ``seed``; its test figures."""
    cfg = SyntheticConfig.pure_random_walk(n_symbols=8, n_bars=1500, seed=3, planted_strength=PHI)
    frames = generate_market(cfg)
    dcfg = DatasetConfig(window=16)
    ds = build_dataset(frames, dcfg)
    split = chronological_split(ds.times, lookahead=dcfg.labels.lookahead)
    train = TrainConfig(epochs=8, batch_size=128, lr=3e-3, patience=4, seed=seed, threads=1)
    _, card = train_on_dataset(
        ds, split, "tiny", name="plant", registry=None, train_cfg=train, data_cfg=dcfg
    )
    report = card.metrics["report"]["heads"]
    d = report["direction"]["models"]
    rank_ic = report["price_1"]["models"]["network"]["rank_ic"]
    oracle = oracle_rank_ic(ds, frames, split.test)
    return {
        "network": d["network"]["accuracy"]["value"],
        "logistic": d["logistic"]["accuracy"]["value"],
        "lightgbm": d["lightgbm"]["accuracy"]["value"],
        "majority": d["majority"]["accuracy"]["value"],
        "rank_ic": rank_ic["value"],
        "rank_ic_lo": rank_ic["lo"],
        "rank_ic_hi": rank_ic["hi"],
        "oracle": oracle,
        "share": rank_ic["value"] / oracle,
    }


def planted(seeds: int) -> pd.DataFrame:
    before = torch.get_num_threads()
    try:
        rows = {s: planted_seed(s) for s in range(seeds)}
    finally:
        torch.set_num_threads(before)
    table = pd.DataFrame(rows).T
    table.loc["mean"] = table.mean()
    return table


# -- 2. deflated Sharpe and PBO ------------------------------------------------------------------
GRID = [(fast, slow) for fast in (1, 2, 3) for slow in (4, 6, 10, 15)]


def sma_sweep(strength: float) -> dict[str, float]:
    cfg = SyntheticConfig.pure_random_walk(
        n_symbols=1, n_bars=1000, seed=3, planted_strength=strength
    )
    (frame,) = generate_market(cfg).values()
    free = CostConfig(commission=0.0, slippage=0.0)
    returns = []
    for fast, slow in GRID:
        res = run_backtest(
            "sma", {"SYN000": frame}, SmaCross, costs=free,
            strategy_kwargs={"config": SmaCrossConfig(fast=fast, slow=slow)},
        )  # fmt: skip
        returns.append(res.returns)
    sharpes = [sharpe_ratio(r) for r in returns]
    best = returns[int(np.argmax(sharpes))]
    pbo = overfitting(returns)
    return {
        "best sharpe (per bar)": max(sharpes),
        "PSR vs 0 (1 trial)": deflated_sharpe(best)["dsr"],
        "DSR (12 trials)": deflated_sharpe(best, sharpes, len(GRID))["dsr"],
        "PBO": float("nan") if pbo is None else pbo.pbo,
    }


# -- 3. the sweep on each executor ---------------------------------------------------------------
SPACE = {"train": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
         "ml": {"min_edge": {"low": 0.0, "high": 0.05}, "allow_short": [True, False]}}  # fmt: skip


def sweep_config(trials: int) -> SweepConfig:
    base = WalkForwardConfig(
        symbols=("SYN000", "SYN001"), window=16, folds=WalkForward(n_splits=2, test_size=80),
        ml=MLRunConfig(min_edge=0.0, horizon_agreement=0),
        train=TrainConfig(epochs=2, batch_size=64, patience=2, max_batches=10,
                          refit_direction=False),
    )  # fmt: skip
    return SweepConfig(
        walkforward=base, space=SPACE, trials=trials, startup_trials=min(trials, 8),
        prune_after=1, batch=2,
    )  # fmt: skip


def timed_sweep(root: Path, trials: int, executor: ExecutorConfig | None) -> tuple[float, Any]:
    store = ParquetStore(root)
    cfg = SyntheticConfig.pure_random_walk(
        n_symbols=2, n_bars=600, seed=3, planted_strength=PHI, start="2006-01-02"
    )
    for frame in generate_market(cfg).values():
        store.write(frame, merge=False)
    t0 = time.perf_counter()
    out = run_sweep(root, sweep_config(trials), executor=executor, log=lambda _: None)
    return time.perf_counter() - t0, out


def sweeps(trials: int, workers: int) -> pd.DataFrame:
    rows: dict[str, dict[str, Any]] = {}
    studies = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ex in (
            ("serial", None),
            ("process", ExecutorConfig(kind="process", workers=workers)),
            ("ray", ExecutorConfig(kind="ray", workers=workers)),
        ):
            try:
                wall, out = timed_sweep(Path(tmp) / name, trials, ex)
            except ImportError as exc:  # the [ray] extra is not installed
                print(f"{name}: skipped ({exc})")
                continue
            studies[name] = out.table["objective"].astype(float).round(10).tolist()
            rows[name] = {"wall s": wall}
    serial = rows["serial"]["wall s"]
    for name, row in rows.items():
        row["speed-up"] = serial / row["wall s"]
        row["same study as serial"] = studies[name] == studies["serial"]
    return pd.DataFrame(rows).T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="training seeds on the planted market")
    p.add_argument("--trials", type=int, default=20, help="trials of the timed sweep")
    p.add_argument("--workers", type=int, default=2, help="workers of process and Ray executors")
    p.add_argument("--skip-sweep", action="store_true", help="leave out the executor timing")
    args = p.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pd.set_option("display.width", 160)
    print(f"## Planted AR(1) {PHI}: direction accuracy and rank IC, {args.seeds} seeds\n")
    print(planted(args.seeds).round(3).to_markdown())
    print("\n## SMA sweep of 12: deflated Sharpe and PBO\n")
    table = pd.DataFrame({"random walk": sma_sweep(0.0), f"planted {PHI}": sma_sweep(PHI)}).T
    print(table.round(3).to_markdown())
    if not args.skip_sweep:
        print(f"\n## Sweep of {args.trials} trials on {args.workers} workers\n")
        print(sweeps(args.trials, args.workers).round(2).to_markdown())


if __name__ == "__main__":
    main()
