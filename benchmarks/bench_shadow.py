"""Shadow scoring cost: the ML strategy with and without a challenger scored in shadow, in one run.

Run: .venv/bin/python benchmarks/bench_shadow.py [--symbols 3] [--bars 600] [--rounds 3]

Two versions of ``tiny`` (seeded weights, seeds 0 and 1: ``tiny:1`` the champion, ``tiny:2``
the challenger) are registered and both served by one TorchServe, as ``btml trade NAME
--shadow NAME:2`` serves them. The same backtest (one request per bar as a live session runs)
is timed with ``shadow=None`` and with a ``ShadowScorer`` asking the challenger, interleaved
``--rounds`` times, in-process (two in-process clients) and through TorchServe (two REST
clients, one per version). Per round, the champion's ``next()`` is clocked on every bar it
decided, and the scorer's ``submit`` (the only shadow work on the trading thread) call by call;
``close()`` gives the shadow thread's own time per bar and the bars it dropped or failed.

The trading path's cost of shadow scoring is the difference of the champion's decision time
per bar (medians over rounds; it includes the shadow thread's contention for the cores and the
GIL), given as a share of a live bar: the backtest's bar plus each symbol's live recompute of
its features over its last 1,000 bars (``LiveFeatureWindows``, timed here, as in
``bench_monitoring.py``). Two ways of feeding the bars with shadow on: ``back to back`` (a
backtest: the shadow thread competes with the champion all the time and its queue can fill,
``dropped``; an upper bound) and ``paced as live`` (before each bar past the warm-up the
strategy waits, unclocked, until the challenger has scored the last one, then 5 ms, with and
without shadow alike, as a live session's bars come a bar's length apart: only the overlap
within a bar remains). Prints a table; writes nothing but temporary files.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_backtest import ML_CONFIG, free_ports, timed  # noqa: E402
from bench_monitoring import live_features_seconds  # noqa: E402

from feeds.sources.synthetic import SyntheticConfig, generate_market  # noqa: E402
from mlmodels.features import FEATURES  # noqa: E402
from mlmodels.pipeline import register_untrained  # noqa: E402
from mlmodels.registry import ModelCard, ModelRegistry  # noqa: E402
from serving.archive import build_archive  # noqa: E402
from serving.client import InProcessClient, RestClient, SignalClient  # noqa: E402
from serving.server import ServerConfig, start, stop  # noqa: E402
from strategies.ml_signal import MLSignalStrategy  # noqa: E402
from strategies.shadow import ShadowScorer  # noqa: E402
from strategies.windows import FeatureWindows  # noqa: E402

HEADER = (
    "| model | bars fed | symbols | bars decided | run without / with shadow | champion's decision "
    "a bar, without / with shadow | difference (share of a live bar) | in submit (share of a "
    "live bar) | shadow thread a bar | shadow bars / dropped / failed | live bar |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


class TimedML(MLSignalStrategy):
    """The ML strategy, clocking ``next()`` on the bars it decided; bars back to back."""

    gap = 0.0  # seconds paused before each bar past the warm-up (unclocked)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spent = 0.0
        self.decided = 0

    def next(self) -> None:
        if self.gap and len(self.data) >= self.warmup:
            if isinstance(self.shadow, TimedShadow):
                self.shadow.wait_idle()  # a live bar comes after the last one was scored
            time.sleep(self.gap)
        before, t = len(self.audit), time.perf_counter()
        super().next()
        if len(self.audit) > before:
            self.spent += time.perf_counter() - t
            self.decided += 1


class PacedML(TimedML):
    """Bars paced as live: each waits for the challenger to finish the last, then ``gap``."""

    gap = 0.005


class TimedShadow(ShadowScorer):
    """The scorer, clocking ``submit`` (the trading thread's share of shadow scoring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent, self.submitted = 0.0, 0

    def submit(self, *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        try:
            super().submit(*args, **kwargs)
        finally:
            self.spent += time.perf_counter() - t
            self.submitted += 1

    def wait_idle(self) -> None:
        """Until every bar submitted is scored or dropped."""
        while self.scored + self.dropped < self.submitted:
            time.sleep(0.0002)


def serve_two(root: Path, window: int) -> tuple[ModelRegistry, list[ModelCard], ServerConfig]:
    """Register ``tiny:1`` and ``tiny:2`` (seeds 0 and 1) and serve both on one TorchServe."""
    names = [f.name for f in FEATURES[:51]]
    reg = ModelRegistry(root / "models")
    cards = [register_untrained(reg, "tiny", "tiny", features=names, window=window, seed=s)
             for s in (0, 1)]  # fmt: skip
    p = free_ports(5)
    cfg = ServerConfig(
        home=root / "serving", inference_port=p[0], management_port=p[1],
        metrics_port=p[2], grpc_inference_port=p[3], grpc_management_port=p[4],
    )  # fmt: skip
    start(cfg, [build_archive(reg, c.ref, cfg.model_store) for c in cards])
    return reg, cards, cfg


# (bars fed, strategy): each is timed without and with shadow, the runs rotated round by round
MODES: dict[str, type[TimedML]] = {"back to back": TimedML, "paced as live": PacedML}


def rows(
    n: int, bars: int, rounds: int, clients: tuple[SignalClient, SignalClient], how: str,
    tmp: Path,
) -> list[str]:  # fmt: skip
    """One table row per way of feeding the bars, on an ``n``-symbol market."""
    champion, challenger = clients
    frames = generate_market(SyntheticConfig(n_symbols=n, n_bars=bars, seed=1))
    windows = FeatureWindows.build(frames, [f.name for f in FEATURES[:51]], 60)
    kw = {"config": ML_CONFIG, "client": champion, "windows": windows}
    warm = TimedShadow(challenger, tmp / f"{how}-{n}-warm.jsonl")  # both models, unclocked
    timed({k: f.iloc[:320] for k, f in frames.items()}, TimedML, shadow=warm, **kw)
    warm.close()
    runs = [(mode, on) for mode in MODES for on in (False, True)]
    wall: dict[tuple[str, bool], list[float]] = {k: [] for k in runs}
    per_bar: dict[tuple[str, bool], list[float]] = {k: [] for k in runs}
    submit: dict[str, list[float]] = {m: [] for m in MODES}
    thread: dict[str, list[float]] = {m: [] for m in MODES}
    counts: dict[str, list[tuple[int, int, int]]] = {m: [] for m in MODES}
    decided = 0
    for r in range(rounds):
        for mode, on in runs[r % len(runs) :] + runs[: r % len(runs)]:
            scorer = TimedShadow(challenger, tmp / f"{how}-{n}-{r}-{mode}.jsonl") if on else None
            t, res = timed(frames, MODES[mode], shadow=scorer, **kw)
            decided = res.strategy.decided
            wall[mode, on].append(t)
            per_bar[mode, on].append(res.strategy.spent / decided)
            if scorer is not None:
                shut = scorer.close()
                submit[mode].append(scorer.spent / decided)
                thread[mode].append(shut["shadow_ms_per_bar"] or float("nan"))
                counts[mode].append((shut["shadow_bars"], shut["shadow_dropped"],
                                     shut["shadow_failed"]))  # fmt: skip
    med = {k: statistics.median(v) for k, v in per_bar.items()}
    off_wall = statistics.median(wall["back to back", False])
    live = off_wall / decided + live_features_seconds(next(iter(frames.values()))) * n
    out = []
    for mode in MODES:
        off, on_ = med[mode, False], med[mode, True]
        diff, sub = on_ - off, statistics.median(submit[mode])
        scored, dropped, failed = (sum(c[i] for c in counts[mode]) for i in range(3))
        run = (f"{off_wall:.2f} / {statistics.median(wall[mode, True]):.2f} s"
               if mode == "back to back" else "(paused)")  # fmt: skip
        out.append(
            f"| {how} | {mode} | {n} | {decided:,} | {run} | "
            f"{off * 1000:.2f} / {on_ * 1000:.2f} ms | "
            f"{diff * 1000:+.2f} ms ({diff / live * 100:+.1f} %) | "
            f"{sub * 1e6:.0f} us ({sub / live * 100:.2f} %) | "
            f"{statistics.median(thread[mode]):.2f} ms | {scored:,} / {dropped:,} / {failed:,} "
            f"(of {decided * rounds:,}) | {live * 1000:.1f} ms |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--symbols", type=int, nargs="+", default=[3])
    ap.add_argument("--bars", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        reg, (champ, chal), cfg = serve_two(Path(tmp), 60)
        try:
            clients = {
                "in-process": (InProcessClient.from_registry(reg.root, champ.ref, threads=1),
                               InProcessClient.from_registry(reg.root, chal.ref, threads=1)),
                "TorchServe": (RestClient.for_server(cfg.home, "tiny", version=champ.version),
                               RestClient.for_server(cfg.home, "tiny", version=chal.version)),
            }  # fmt: skip
            print(HEADER)
            for how, pair in clients.items():
                for n in args.symbols:
                    for line in rows(n, args.bars, args.rounds, pair, how, Path(tmp)):
                        print(line, flush=True)
        finally:
            stop(cfg)


if __name__ == "__main__":
    main()
