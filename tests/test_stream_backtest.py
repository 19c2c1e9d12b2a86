"""Streaming presets served statefully (issue "backtests at the speed of the model").

A backtest of ``tiny-stream`` / ``hybrid-stream`` continues each symbol's stream on the
server: one bar per request (per-bar) or a chunk of bars (batched) give the same decisions,
trades and value; the streamed outputs equal stepping the network bar by bar from the
stream's start; through a real TorchServe they equal in-process; a worker killed mid-run loses
its states and the run rebuilds them (said in the log) with the same result; a continuation
with a gap is refused and changes nothing; an idle stream expires.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mlmodels.registry import ModelRegistry
from serving.client import InProcessClient, RestClient, RestConfig
from serving.payload import BadRequest
from serving.streams import StateLost, StreamGap, StreamRequest, StreamSessions
from strategies.streamed import StreamCache, StreamSignals
from strategies.windows import FeatureWindows
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
    reg = ModelRegistry(tmp_path_factory.mktemp("stream-bt") / "models")
    for arch in ("tiny-stream", "hybrid-stream", "tiny"):
        register_preset(reg, arch, arch)
    return reg


def client(registry: ModelRegistry, arch: str) -> InProcessClient:
    return InProcessClient.from_registry(registry.root, f"{arch}:1", threads=1)


@pytest.mark.parametrize("arch", ["tiny-stream", "hybrid-stream"])
def test_per_bar_and_chunked_streams_trade_the_same(frames, windows, registry, arch) -> None:
    c = client(registry, arch)
    per_bar = ml_backtest(frames, windows, c)
    chunked = ml_backtest(frames, windows, c, inference="batched", chunk=64)
    assert isinstance(per_bar.strategy.batched, StreamSignals)
    assert per_bar.strategy.batched.cache.chunk == 1
    assert_same_run(per_bar, chunked)
    bars = sum(1 for d in per_bar.strategy.audit if d.symbol == "AAPL")
    assert per_bar.strategy.batched.cache.requests == bars  # a request per bar, all symbols
    assert chunked.strategy.batched.cache.requests == -(-bars // 64)


def test_streamed_outputs_equal_stepping_the_network_from_the_stream_start(
    windows, registry
) -> None:
    c = client(registry, "tiny-stream")
    cache = StreamCache(windows, c, chunk=50)
    net, scaler = c.handler.net, c.handler.scaler
    feats = windows.symbols["IBM"]
    start = int(np.argmax(np.diff(feats.bad) == 0))  # the first complete feature row
    x = torch.from_numpy(scaler.transform(feats.values[start:]))[None]
    state, checked = net.init_state(1), 0
    with torch.inference_mode():
        for t in range(x.shape[1]):
            out, state = net.step(x[:, t], torch.zeros(1, 3), state)
            row = cache.get("IBM", int(feats.times[start + t]))
            assert (row is None) == (t < WINDOW - 1)  # a signal once a window is behind it
            if row is not None:
                heads = net.from_paths(torch.tensor(row)[None], torch.zeros(1, 3))
                torch.testing.assert_close(heads["price"], out["price"], rtol=1e-5, atol=1e-5)
                checked += 1
    assert checked > 100 and cache.requests == -(-checked // 50)


def test_a_windowed_model_refuses_stream_requests(registry) -> None:
    c = client(registry, "tiny")
    rows = np.zeros((1, 5, len(feature_names())), np.float32)
    with pytest.raises(BadRequest, match="restarts on every window and keeps no stream"):
        c.stream_paths("s", ["AAPL"], [None], ["2020-01-07"], rows)


def test_a_gap_is_refused_and_changes_nothing(registry) -> None:
    c = client(registry, "tiny-stream")
    rows = np.random.default_rng(0).normal(size=(1, 6, len(feature_names()))).astype(np.float32)
    whole = c.stream_paths("g", ["AAPL"], [None], ["t5"], rows)
    c.stream_paths("g", ["AAPL"], [None], ["t2"], rows[:, :3])
    with pytest.raises(StreamGap, match="the state ends at bar t2, the request continues from t3"):
        c.stream_paths("g", ["AAPL"], ["t3"], ["t5"], rows[:, 4:])
    with pytest.raises(StateLost, match="no state here"):
        c.stream_paths("g", ["MSFT"], ["t2"], ["t5"], rows[:, 3:])
    rest = c.stream_paths("g", ["AAPL"], ["t2"], ["t5"], rows[:, 3:])  # the state was kept
    np.testing.assert_allclose(rest[0], whole[0, 3:], rtol=1e-5, atol=1e-6)


def test_an_idle_stream_expires_and_the_oldest_go_first() -> None:
    now = [0.0]
    sessions = StreamSessions(
        lambda n: {"h": torch.zeros(n, 2)}, idle_seconds=10, max_streams=2, clock=lambda: now[0]
    )
    req = [StreamRequest("A", None, "t1", torch.zeros(1, 2))]
    sessions.store("s", req, {"h": torch.ones(1, 2)})
    assert sessions.check("s", [StreamRequest("A", "t1", "t2", torch.zeros(1, 2))])
    now[0] = 11.0
    with pytest.raises(StateLost):
        sessions.check("s", [StreamRequest("A", "t1", "t2", torch.zeros(1, 2))])
    for sym in ("A", "B", "C"):
        sessions.store("s", [StreamRequest(sym, None, "t1", torch.zeros(1, 2))], {"h": torch.ones(1, 2)})  # fmt: skip
    assert len(sessions) == 2  # A went first
    with pytest.raises(StateLost):
        sessions.check("s", [StreamRequest("A", "t1", "t2", torch.zeros(1, 2))])
    assert sessions.close("s") == 2 and len(sessions) == 0


# -- through a real TorchServe --------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory, registry) -> Any:
    from serving.archive import build_archive
    from serving.server import start, stop

    cfg = server_config(registry.root.parent / "serving")
    start(cfg, [build_archive(registry, "tiny-stream:1", cfg.model_store)])
    yield cfg
    stop(cfg)


def rest(cfg: Any) -> RestClient:
    return RestClient(RestConfig(url=cfg.inference_url, model="tiny-stream", key_file=cfg.key_file))


@pytest.mark.slow
def test_streams_through_torchserve_equal_in_process(frames, windows, registry, served) -> None:
    tail = client(registry, "tiny-stream")
    scorer = StreamSignals(windows, rest(served), tail, chunk=1)
    per_bar = ml_backtest(frames, windows, rest(served), batched=scorer)
    assert scorer.cache.requests == sum(1 for d in per_bar.strategy.audit if d.symbol == "AAPL")
    assert_same_run(ml_backtest(frames, windows, tail), per_bar)
    chunked = StreamSignals(windows, rest(served), tail, chunk=100)
    assert_same_run(per_bar, ml_backtest(frames, windows, rest(served), batched=chunked))


class _KillsWorker:
    """A real REST client whose server's Python worker is killed after ``after`` requests
    (TorchServe starts a new one, without the states)."""

    def __init__(self, client: RestClient, cfg: Any, after: int) -> None:
        self.client, self.cfg, self.left, self.killed = client, cfg, after, 0

    def stream_paths(self, *args: Any) -> np.ndarray:
        if self.left == 0:
            from serving.state import load_state
            from tests.test_serving_lifecycle import worker_pids

            state = load_state(self.cfg)
            for pid in worker_pids(state.pgid):
                os.kill(pid, signal.SIGKILL)
                self.killed += 1
            time.sleep(1.0)
        self.left -= 1
        return self.client.stream_paths(*args)


@pytest.mark.slow
def test_a_lost_state_is_rebuilt_and_said_so(frames, windows, registry, served, caplog) -> None:
    tail = client(registry, "tiny-stream")
    reference = ml_backtest(frames, windows, tail, inference="batched", chunk=40)
    killer = _KillsWorker(
        RestClient(RestConfig(url=served.inference_url, model="tiny-stream",
                              key_file=served.key_file, deadline_s=60)), served, after=3)  # fmt: skip
    scorer = StreamSignals(windows, killer, tail, chunk=40)
    with caplog.at_level(logging.WARNING, logger="strategies.streamed"):
        run = ml_backtest(frames, windows, rest(served), batched=scorer)
    assert killer.killed >= 1 and scorer.cache.rebuilds >= 1
    assert "could not continue on the server (lost" in caplog.text
    assert "rebuilt from its start" in caplog.text
    assert_same_run(reference, run)
