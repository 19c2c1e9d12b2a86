"""Helpers for serving tests: registered models of every preset, free ports, a real server,
and the ML backtests that batched and streamed inference are compared on."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlmodels.features import FEATURES
from mlmodels.pipeline import register_untrained
from mlmodels.registry import ModelCard, ModelRegistry
from serving.server import ServerConfig

WINDOW = 16
N_FEATURES = 51


def feature_names(n: int = N_FEATURES) -> list[str]:
    return [f.name for f in FEATURES[:n]]


def register_preset(
    reg: ModelRegistry, arch: str, name: str, seed: int = 0, window: int = WINDOW
) -> ModelCard:
    """``arch`` with seeded random weights: serving tests need fixed weights, not good ones."""
    return register_untrained(reg, arch, name, features=feature_names(), window=window, seed=seed)


def free_ports(n: int = 3) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def server_config(home: Path, **kw: object) -> ServerConfig:
    i, m, x, gi, gm = free_ports(5)
    return ServerConfig(
        home=home,
        inference_port=i,
        management_port=m,
        metrics_port=x,
        grpc_inference_port=gi,
        grpc_management_port=gm,
        **kw,  # type: ignore[arg-type]
    )


def cli_ports(cfg: ServerConfig) -> list[str]:
    """``btml serve start`` options for ``cfg``'s ports."""
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    out = []
    for name in names:
        out += [f"--{name.replace('_', '-')}-port", str(getattr(cfg, f"{name}_port"))]
    return out


def windows(n: int, seed: int = 1, window: int = WINDOW) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, window, N_FEATURES)).astype(np.float32)


# -- backtests compared across inference modes -----------------------------------------------------
#: The ML strategy's rules in those backtests: every signal trades, 20 % of equity per entry.
ML_RULES: dict[str, Any] = {"min_edge": 0.0, "horizon_agreement": 0, "allow_short": True}


def sample_frames() -> dict[str, pd.DataFrame]:
    """AAPL, IBM and MSFT of the embedded sample, 2009 to mid-2010 (adjusted)."""
    from feeds.sample import load_sample

    s = load_sample(adjusted=True)
    return {k: s[k].loc["2009-01-01":"2010-06-30"] for k in ("AAPL", "IBM", "MSFT")}


def ml_backtest(frames: Any, windows: Any, client: Any, *, batched: Any = None, **cfg: Any) -> Any:
    """A real backtrader run of ``MLSignalStrategy`` over ``client`` (``cfg``: config fields)."""
    from analyzers.backtest import run_backtest
    from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
    from strategies.sizing import FixedFraction

    config = MLSignalConfig(**{"sizer": FixedFraction(fraction=0.2), **ML_RULES, **cfg})
    kwargs = {"config": config, "client": client, "windows": windows, "batched": batched}
    return run_backtest("ml", frames, MLSignalStrategy, strategy_kwargs=kwargs)


def assert_same_run(a: Any, b: Any) -> None:
    """The same decisions (time, symbol, target, reason), trades and final value (1e-9); the
    heads agree to float32 rounding."""
    assert a.stats.trades > 0 and a.stats.trades == b.stats.trades
    assert a.final_value == pytest.approx(b.final_value, rel=1e-9)
    da = [(d.timestamp, d.symbol, d.target, d.reason) for d in a.strategy.audit]
    db = [(d.timestamp, d.symbol, d.target, d.reason) for d in b.strategy.audit]
    assert da == db
    for x, y in zip(a.strategy.audit, b.strategy.audit, strict=True):
        np.testing.assert_allclose(x.signal.returns, y.signal.returns, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(x.signal.direction, y.signal.direction, rtol=1e-5, atol=2e-6)
