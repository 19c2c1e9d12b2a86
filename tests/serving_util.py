"""Helpers for serving tests: registered models of every preset, free ports, a real server."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

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
