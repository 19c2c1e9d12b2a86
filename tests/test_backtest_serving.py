"""``signal_client`` refuses a running TorchServe that does not serve the model (no hang, no 404s)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.errors import ConfigError
from mlmodels.features import feature_names
from mlmodels.pipeline import register_untrained
from mlmodels.registry import ModelRegistry
from serving.server import ServerConfig
from workflows.backtest import signal_client


def test_a_running_server_without_the_model_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    card = register_untrained(reg, "tiny", "wf-f2", features=list(feature_names(False)), window=8)
    cfg = ServerConfig(home=tmp_path / "serving")
    cfg.state_file.parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": os.getpid(), "pgid": os.getpgid(0), "inference_port": 1,
             "management_port": 2, "metrics_port": 3, "models": {"wf-f1": [1]}}  # fmt: skip
    cfg.state_file.write_text(json.dumps(state))
    with (
        pytest.raises(
            ConfigError, match=r"already running .* without wf-f2:1 \(it serves wf-f1:1\)"
        ),
        signal_client(tmp_path, card, "torchserve", log=lambda _: None),
    ):
        pass
    assert json.loads(cfg.state_file.read_text()) == state  # the running server's record kept
