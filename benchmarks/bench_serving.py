"""Serving benchmark: TorchServe over REST against the same model in-process, in one run.

Run: .venv/bin/python benchmarks/bench_serving.py [--arch tiny --arch efficient-hybrid]

For each preset (registered with seeded random weights: latency does not depend on training),
the script archives the model, starts a real TorchServe (1 worker, 1 torch thread, no dynamic
batching, the defaults of ``btml serve archive``) and times, interleaved round-robin so load
hits all paths alike:

* batch 1: REST binary, REST JSON, the in-process client (the same handler, 1 thread) and the
  bare network forward; p50 and p99. Goals: REST p50 within max(1.5x, +2 ms) of in-process,
  REST p99 within 2x its p50, and no request near 40 ms (the Nagle / delayed-ACK trap);
* batch 64: REST binary and JSON throughput (windows/s) against the model's FLOP floor, the
  time its forward FLOPs (counted by ``torch.utils.flop_counter``) take at the matmul rate this
  CPU reaches on one thread (goal: within 1.5x of the floor).

For a streaming preset also one stream step (one new bar continuing a stream kept on the
server, ``serving.streams``), REST binary against in-process, p50 and p99, the same goals.

Prints a table; writes nothing. Record the figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mlmodels.features import FEATURES
from mlmodels.pipeline import register_untrained
from mlmodels.registry import ModelRegistry
from serving.archive import build_archive
from serving.client import InProcessClient, RestClient, RestConfig
from serving.server import ServerConfig, start, stop

N_FEATURES = 51


def timed(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    for run in runs.values():  # warm-up
        for _ in range(5):
            run()
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            out[name].append((time.perf_counter() - t) * 1000)
    return out


def matmul_gflops() -> float:
    """The single-thread float32 matmul rate of this CPU (GFLOP/s), the floor's yardstick."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(3):
        a @ b
    n, t = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 512**3 * n / (time.perf_counter() - t) / 1e9


def forward_flops(net: torch.nn.Module, x: torch.Tensor, pos: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x, pos)
    return int(counter.get_total_flops())


def bench_arch(arch: str, root: Path, args: argparse.Namespace, port: int) -> list[str]:
    """Register, archive and serve ``arch``, time every path, and return its two table rows."""
    reg = ModelRegistry(root / "models")
    names = [f.name for f in FEATURES[:N_FEATURES]]
    card = register_untrained(reg, arch, arch, features=names, window=args.window)
    cfg = ServerConfig(
        home=root / f"serving-{arch}", inference_port=port, management_port=port + 1,
        metrics_port=port + 2, grpc_inference_port=port + 3, grpc_management_port=port + 4,
        netty_threads=args.netty_threads,
    )  # fmt: skip
    mar = build_archive(reg, card.ref, cfg.model_store)
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(1, args.window, N_FEATURES)).astype(np.float32)
    w64 = rng.normal(size=(64, args.window, N_FEATURES)).astype(np.float32)
    local = InProcessClient.from_registry(reg.root, card.ref, threads=1)
    bare = bare_forward(local, w1)
    start(cfg, [mar])
    try:
        t1, t64 = time_paths(arch, cfg, local, bare, w1, w64, args.rounds)
        steps = time_steps(arch, cfg, local, args.rounds) if card.streaming else None
    finally:
        stop(cfg)
    floor_ms = forward_flops(*_net_inputs(local, w64)) / (args.gflops * 1e9) * 1000
    rows = [latency_row(arch, card.parameters, t1), throughput_row(arch, floor_ms, t64)]
    return rows + ([step_row(arch, steps)] if steps else [])


def time_steps(
    arch: str, cfg: ServerConfig, local: InProcessClient, rounds: int
) -> dict[str, list[float]]:
    """Times (ms) of one stream step (one bar) continuing a stream, REST binary and in-process."""
    rest = RestClient(RestConfig(url=cfg.inference_url, model=arch, key_file=cfg.key_file))
    row = np.random.default_rng(1).normal(size=(1, 1, N_FEATURES)).astype(np.float32)
    bars = {"rest-bin": 0, "inproc": 0}

    def stepper(key: str, client: object) -> Callable[[], None]:
        def step() -> None:
            i = bars[key]
            prev = None if i == 0 else f"bar{i - 1}"
            client.stream_paths("bench", ["X"], [prev], [f"bar{i}"], row)  # type: ignore[attr-defined]
            bars[key] = i + 1

        return step

    return timed({k: stepper(k, c) for k, c in (("rest-bin", rest), ("inproc", local))}, rounds)


def step_row(arch: str, t: dict[str, list[float]]) -> str:
    """The stream-step row: p50s, REST p99, the REST / in-process goal."""
    p50 = {k: statistics.median(v) for k, v in t.items()}
    p99 = float(np.percentile(t["rest-bin"], 99))
    goal = max(1.5 * p50["inproc"], p50["inproc"] + 2.0)
    return (
        f"| {arch} stream step | | | {p50['inproc']:.2f} | {p50['rest-bin']:.2f} / {p99:.2f} | "
        f"| {p50['rest-bin'] / p50['inproc']:.2f}x (goal <= {goal:.2f} ms: "
        f"{'met' if p50['rest-bin'] <= goal else 'NOT met'}) | {p99 / p50['rest-bin']:.2f}x | |"
    )


def _net_inputs(
    local: InProcessClient, w: np.ndarray
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The network and the tensors the handler feeds it for windows ``w``."""
    net = local.handler.net
    assert net is not None
    x, pos = local.handler.preprocess([local.handler.preprocess_one({"body": _bin(w)})])
    return net, x, pos


def bare_forward(local: InProcessClient, w: np.ndarray) -> Callable[[], None]:
    """The network's forward alone on windows ``w`` (preprocessed once, outside the timing)."""
    net, x, pos = _net_inputs(local, w)

    def bare() -> None:
        with torch.inference_mode():
            net(x, pos)

    return bare


def time_paths(
    arch: str,
    cfg: ServerConfig,
    local: InProcessClient,
    bare: Callable[[], None],
    w1: np.ndarray,
    w64: np.ndarray,
    rounds: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Batch-1 and batch-64 times (ms) of REST binary, REST JSON, in-process (and bare, b1)."""
    binary = RestClient(RestConfig(url=cfg.inference_url, model=arch, key_file=cfg.key_file))
    js = RestClient(
        RestConfig(url=cfg.inference_url, model=arch, key_file=cfg.key_file, binary=False)
    )
    torch.set_num_threads(1)
    t1 = timed(
        {"rest-bin": lambda: binary.predict(w1), "rest-json": lambda: js.predict(w1),
         "inproc": lambda: local.predict(w1), "forward": bare},
        rounds,
    )  # fmt: skip
    t64 = timed(
        {"rest-bin": lambda: binary.predict(w64), "rest-json": lambda: js.predict(w64),
         "inproc": lambda: local.predict(w64)},
        max(10, rounds // 10),
    )  # fmt: skip
    return t1, t64


def latency_row(arch: str, parameters: int, t1: dict[str, list[float]]) -> str:
    """The batch-1 row: p50s, REST p99, the REST / in-process goal and the 40 ms count."""
    p50 = {k: statistics.median(v) for k, v in t1.items()}
    p99 = {k: float(np.percentile(v, 99)) for k, v in t1.items()}
    near40 = sum(1 for v in t1["rest-bin"] if 35 <= v <= 45)
    goal = max(1.5 * p50["inproc"], p50["inproc"] + 2.0)
    return (
        f"| {arch} | {parameters:,} | {p50['forward']:.2f} | {p50['inproc']:.2f} | "
        f"{p50['rest-bin']:.2f} / {p99['rest-bin']:.2f} | {p50['rest-json']:.2f} | "
        f"{p50['rest-bin'] / p50['inproc']:.2f}x (goal <= {goal:.2f} ms: "
        f"{'met' if p50['rest-bin'] <= goal else 'NOT met'}) | "
        f"{p99['rest-bin'] / p50['rest-bin']:.2f}x | {near40} |"
    )


def throughput_row(arch: str, floor_ms: float, t64: dict[str, list[float]]) -> str:
    """The batch-64 row: median times, windows/s, and each path against the FLOP floor."""
    b64 = {k: statistics.median(v) for k, v in t64.items()}
    return (
        f"| {arch} b64 | floor {floor_ms:.1f} ms | inproc {b64['inproc']:.1f} ms | "
        f"REST bin {b64['rest-bin']:.1f} ms ({64000 / b64['rest-bin']:.0f} win/s) | "
        f"REST json {b64['rest-json']:.1f} ms | bin/floor {b64['rest-bin'] / floor_ms:.2f}x | "
        f"inproc/floor {b64['inproc'] / floor_ms:.2f}x |"
    )


def _bin(w: np.ndarray) -> bytes:
    from serving.payload import encode_binary

    return encode_binary(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", action="append", default=None)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--port", type=int, default=18180)
    ap.add_argument("--netty-threads", type=int, default=0, help="0 = cores")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.gflops = matmul_gflops()
    print(f"single-thread matmul rate: {args.gflops:.1f} GFLOP/s")
    print("| model | params | forward b1 ms | in-process b1 ms | REST bin p50 / p99 ms | "
          "REST json p50 ms | REST/in-process | p99/p50 | requests 35-45 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        archs = args.arch or ["tiny", "efficient-hybrid", "tiny-stream", "hybrid-stream"]
        for i, arch in enumerate(archs):
            for line in bench_arch(arch, Path(tmp), args, args.port + 10 * i):
                print(line, flush=True)


if __name__ == "__main__":
    main()
