"""Batched inference in real backtrader runs (issue "backtests at the speed of the model"):
the paths scored ahead in chunks give the same decisions, trades and final value as one
request per timestamp, for every preset, in-process and through a real TorchServe; a
server that takes fewer windows gets the chunk split; a server that dies mid-run aborts the
run (or applies the serving policy), never trades on partial or zero signals.

"The same" is the standard the project already holds TorchServe to against in-process: the
same decisions (time, symbol, target, reason) and the final value to 1e-9; the heads agree to
float32 rounding (a window scored in a batch of another size differs in its last bits)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError
from mlmodels.registry import ModelRegistry
from serving.client import InProcessClient, RestClient, RestConfig
from strategies.batched import BatchedSignals, batched_signals
from strategies.ml_signal import MLSignalConfig, ServingAborted
from strategies.windows import FeatureWindows, LiveFeatureWindows
from tests.serving_util import (
    WINDOW,
    assert_same_run,
    feature_names,
    ml_backtest,
    register_preset,
    sample_frames,
    server_config,
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return sample_frames()


@pytest.fixture(scope="module")
def windows(frames) -> FeatureWindows:
    return FeatureWindows.build(frames, feature_names(), WINDOW)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return ModelRegistry(tmp_path_factory.mktemp("batched-bt") / "models")


def in_process(registry: ModelRegistry, arch: str) -> InProcessClient:
    if arch not in registry.names():
        register_preset(registry, arch, arch)
    return InProcessClient.from_registry(registry.root, f"{arch}:1", threads=1)


def test_batched_equals_per_bar_in_process(frames, windows, registry) -> None:
    client = in_process(registry, "tiny")
    per_bar = ml_backtest(frames, windows, client)
    batched = ml_backtest(frames, windows, client, inference="batched", chunk=64)
    assert_same_run(per_bar, batched)
    cache = batched.strategy.batched.cache
    feats = windows.symbols["AAPL"]
    bars = sum(1 for t in feats.times if feats.window_at(int(t), WINDOW) is not None)
    assert cache.requests == -(-bars // 64)  # one request per 64 bars of all three symbols
    assert cache.windows_scored == sum(1 for d in batched.strategy.audit if d.signal)


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch", ["efficient-hybrid", "simplex-lstm", "task-ensemble", "seed-full", "tiny-stream"]
)
def test_batched_equals_per_bar_for_every_preset(frames, windows, registry, arch) -> None:
    client = in_process(registry, arch)
    per_bar = ml_backtest(frames, windows, client)
    assert_same_run(per_bar, ml_backtest(frames, windows, client, inference="batched"))


def test_batched_is_refused_where_it_cannot_score_ahead(frames, windows, registry) -> None:
    live = LiveFeatureWindows(feature_names(), WINDOW)
    with pytest.raises(ConfigError, match="live feeds run with inference='per-bar'"):
        batched_signals(in_process(registry, "tiny"), live)
    rest = RestClient(RestConfig(url="http://127.0.0.1:9", model="tiny"))
    with pytest.raises(ConfigError, match="runs the fusion and heads in-process"):
        batched_signals(rest, windows)
    with pytest.raises(ConfigError, match="inference must be one of per-bar, batched"):
        MLSignalConfig(inference="ahead")


# -- through a real TorchServe --------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory, registry) -> Any:
    from serving.archive import ModelServeConfig, build_archive
    from serving.server import start, stop

    for arch in ("tiny", "task-ensemble"):
        in_process(registry, arch)
    register_preset(registry, "tiny", "small", seed=3)  # a server taking 8 windows a request
    cfg = server_config(registry.root.parent / "serving")  # beside the registry it checks
    archives = [build_archive(registry, f"{a}:1", cfg.model_store)
                for a in ("tiny", "task-ensemble")]  # fmt: skip
    small = ModelServeConfig(max_windows=8)
    archives.append(build_archive(registry, "small:1", cfg.model_store, small))
    start(cfg, archives)
    yield cfg
    stop(cfg)


def rest(cfg: Any, model: str) -> RestClient:
    return RestClient(RestConfig(url=cfg.inference_url, model=model, key_file=cfg.key_file))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tiny", "task-ensemble"])
def test_batched_through_torchserve_equals_per_bar(frames, windows, registry, served, arch):
    client, tail = rest(served, arch), in_process(registry, arch)
    per_bar = ml_backtest(frames, windows, client)
    batched = ml_backtest(frames, windows, client,
                       batched=BatchedSignals(windows, client, tail, chunk=128))  # fmt: skip
    assert_same_run(per_bar, batched)
    assert_same_run(per_bar, ml_backtest(frames, windows, tail))  # and in-process, per bar


@pytest.mark.slow
def test_a_chunk_above_the_servers_limit_is_split(frames, windows, registry, served) -> None:
    register_preset(registry, "tiny", "small", seed=3) if "small" not in registry.names() else None
    client, tail = rest(served, "small"), InProcessClient.from_registry(registry.root, "small:1")
    scorer = BatchedSignals(windows, client, tail, chunk=100)  # 300 windows a fill
    run = ml_backtest(frames, windows, client, batched=scorer)
    assert run.stats.trades > 0 and scorer.cache.max_request == 8
    assert_same_run(ml_backtest(frames, windows, tail), run)


@pytest.mark.slow
def test_a_server_of_another_model_is_refused(frames, windows, registry, served) -> None:
    scorer = BatchedSignals(windows, rest(served, "small"), in_process(registry, "tiny"))
    with pytest.raises(ConfigError, match="the served model is not tiny:1"):
        ml_backtest(frames, windows, rest(served, "small"), batched=scorer)


class _Dies:
    """A real REST client whose server is stopped after ``after`` path requests."""

    def __init__(self, client: RestClient, cfg: Any, after: int) -> None:
        self.client, self.cfg, self.left = client, cfg, after

    def paths(self, w: np.ndarray) -> np.ndarray:
        from serving.server import stop

        if self.left == 0:
            stop(self.cfg)
        self.left -= 1
        return self.client.paths(w)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["abort", "hold"])
def test_a_server_dying_mid_run_aborts_or_holds_never_zero_signals(
    frames, windows, registry, policy: str
) -> None:
    from serving.archive import build_archive
    from serving.server import start

    tail = in_process(registry, "tiny")  # registers it when this test runs alone
    cfg = server_config(registry.root.parent / f"serving-{policy}")
    start(cfg, [build_archive(registry, "tiny:1", cfg.model_store)])
    client = RestClient(RestConfig(url=cfg.inference_url, model="tiny", key_file=cfg.key_file,
                                   deadline_s=3, retries=1))  # fmt: skip
    scorer = BatchedSignals(windows, _Dies(client, cfg, 2), tail, chunk=50)
    if policy == "abort":
        with pytest.raises(ServingAborted, match="the run is aborted"):
            ml_backtest(frames, windows, client, batched=scorer)
        return
    run = ml_backtest(frames, windows, client, batched=scorer, serving_failure="hold")
    audit = run.strategy.audit
    missing = [d for d in audit if d.signal is None]
    assert missing and run.strategy.serving_failures > 0
    first = min(d.timestamp for d in missing)
    assert all(d.signal is None for d in audit if d.timestamp >= first)  # no partial bars
    assert all(d.signal.is_finite() for d in audit if d.signal is not None)
