"""The TorchServe handler: one class serving any registered model, reused in-process.

``initialize`` reads the model card and weights from the model directory (the unpacked ``.mar``
or a registry version folder) and, for a model trained on the user's own features, checks the
copy of their module there against the card's sha256 (a missing or altered copy refuses the
load; requests carry feature windows, so the module itself does not run here);
``preprocess`` decodes and checks each request (``serving.payload``) and applies the card's
scaler, ``inference`` runs the network under ``torch.inference_mode``, ``postprocess`` turns
each window's heads into a ``Signal`` dict.

A streaming preset's handler also keeps the recurrent state of every stream it is sent
(:mod:`serving.streams`): stream requests continue it, in order, and a gap or a lost state
is refused with 409.

``handle`` works on TorchServe's batch (a list of requests, which dynamic batching may fill
with several clients' requests): valid requests are concatenated into one forward pass; an
invalid one gets HTTP 400 with its message while the others are answered normally.

The feature scaling (``Scaler``) and the networks (``load_weights``) are the training code's own.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlmodels.dataset import Scaler
from mlmodels.registry import CARD_FILE, WEIGHTS_FILE, ModelCard, load_weights
from mlmodels.user_features import verify_copy
from serving.paths import CONTENT_TYPE as PATHS_CONTENT_TYPE
from serving.paths import encode_summaries
from serving.payload import BadRequest, Batch, TooManyWindows, decode
from serving.signal import Signal
from serving.streams import (
    DEFAULT_IDLE_SECONDS,
    StreamConflict,
    StreamRequest,
    StreamSessions,
    advance,
)


def _import_base_handler() -> type:
    """TorchServe's ``BaseHandler``, without its import-time warnings about optional backends
    (OpenVINO, onnxruntime, TensorRT) that this handler does not use."""
    ts_log = logging.getLogger("ts.torch_handler.base_handler")
    level = ts_log.level
    ts_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from ts.torch_handler.base_handler import BaseHandler
    finally:
        ts_log.setLevel(level)
    return BaseHandler  # type: ignore[no-any-return]


BaseHandler = _import_base_handler()


log = logging.getLogger(__name__)

DEFAULT_MAX_WINDOWS = 4096


class SignalHandler(BaseHandler):  # type: ignore[misc,valid-type]
    """Serve one model version's signals (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.card: ModelCard | None = None
        self.net: torch.nn.Module | None = None
        self.scaler: Scaler | None = None
        self.max_windows = DEFAULT_MAX_WINDOWS
        self.streams: StreamSessions | None = None

    def initialize(self, context: Any) -> None:
        """Load the card, weights and scaler from ``context.system_properties['model_dir']``."""
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        cfg = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        threads = int(cfg.get("threads") or os.environ.get("BTML_SERVE_THREADS") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.max_windows = int(cfg.get("max_windows", DEFAULT_MAX_WINDOWS))
        self.card = ModelCard.from_file(model_dir / CARD_FILE)
        if self.card.feature_module:
            verify_copy(self.card.feature_module, model_dir, self.card.ref)
        manifest = getattr(context, "manifest", None) or {}
        weights = manifest.get("model", {}).get("serializedFile") or WEIGHTS_FILE
        self.net = load_weights(model_dir / weights, self.card)
        self.scaler = self.card.scaler_obj()
        if getattr(getattr(self.net, "cfg", None), "streaming", False):
            idle = float(cfg.get("stream_idle_seconds", DEFAULT_IDLE_SECONDS))
            self.streams = StreamSessions(self.net.init_state, idle_seconds=idle)  # type: ignore[arg-type]
        self.model = self.net
        self.context = context
        self.initialized = True
        log.info("btml handler ready: %s, %d threads", self.card.ref, torch.get_num_threads())

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Answer every request of TorchServe's batch; bad ones get 400 (413: too many
        windows) and their message. Requests flagged for the paths' summaries are answered in
        the binary format of :mod:`serving.paths`, the others with signals (JSON)."""
        batches: list[Batch | None] = []
        out: list[Any] = []
        for idx, request in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            context.set_response_header(idx, "X-Btml-Batch-Requests", str(len(data)))
            try:
                batches.append(self.preprocess_one(request))
                out.append(None)
            except BadRequest as err:
                batches.append(None)
                out.append(_refusal(err, context, idx))
        for idx, b in enumerate(batches):  # in order: each continues its streams' states
            if b is not None and b.streaming:
                try:
                    out[idx] = self._stream(b, context, idx)
                except BadRequest as err:
                    out[idx] = _refusal(err, context, idx)
        batches = [None if b is None or b.streaming else b for b in batches]
        signal_idx = [i for i, b in enumerate(batches) if b is not None and not b.paths_only]
        path_idx = [i for i, b in enumerate(batches) if b is not None and b.paths_only]
        if signal_idx:
            good = [batches[i] for i in signal_idx]
            signals = self.postprocess(self.inference(self.preprocess(good)), good)  # type: ignore[arg-type]
            for idx, part in zip(signal_idx, _parts(signals, good), strict=True):
                out[idx] = json.dumps(part)
        if path_idx:
            asked = [batches[i] for i in path_idx]
            summaries = self.paths(np.concatenate([b.windows for b in asked]))  # type: ignore[union-attr]
            for idx, part in zip(path_idx, _parts(summaries, asked), strict=True):
                out[idx] = encode_summaries(part)
                context.set_response_content_type(idx, PATHS_CONTENT_TYPE)
        return out

    def _stream(self, batch: Batch, context: Any, idx: int) -> Any:
        """Continue a stream request's streams (:mod:`serving.streams`): every bar's path
        outputs (paths flag) or the signal at each stream's last bar."""
        assert self.net is not None and self.scaler is not None and batch.prev is not None
        if self.streams is None:
            raise BadRequest(
                f"{self._card().ref} ({self._card().arch}) restarts on every window and keeps "
                "no stream; send windows, or serve a streaming preset"
            )
        rows = torch.from_numpy(self.scaler.transform(batch.windows))
        requests = [
            StreamRequest(str(sym), prev, str(last), rows[i])
            for i, (sym, prev, last) in enumerate(
                zip(batch.symbols, batch.prev, batch.timestamps, strict=True)
            )
        ]
        assert batch.session is not None
        seq = advance(self.net, self.streams, batch.session, requests)
        if batch.paths_only:
            context.set_response_content_type(idx, PATHS_CONTENT_TYPE)
            return encode_summaries(seq.flatten(0, 1).numpy())
        last = seq[:, -1].numpy()
        return json.dumps(
            self.signals_from_paths(last, batch.positions, batch.symbols, batch.timestamps)
        )

    def paths(self, windows: np.ndarray) -> np.ndarray:
        """The network's path summaries ``(N, D)`` of raw windows ``(N, W, F)`` (scaled here)."""
        assert self.net is not None and self.scaler is not None
        x = torch.from_numpy(self.scaler.transform(windows))
        with torch.inference_mode():
            return self.net.paths(x).numpy()  # type: ignore[operator,no-any-return]

    def signals_from_paths(
        self,
        summaries: np.ndarray,
        positions: np.ndarray,
        symbols: list[str | None],
        timestamps: list[str | None],
    ) -> list[dict[str, Any]]:
        """Signal dicts from :meth:`paths`' summaries and the position states: the fusion and
        the heads only (what a batched backtest runs per bar, in-process)."""
        assert self.net is not None
        s = torch.from_numpy(np.ascontiguousarray(summaries, dtype=np.float32))
        pos = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float32))
        with torch.inference_mode():
            out = self.net.from_paths(s, pos)  # type: ignore[operator]
        empty = np.empty((len(summaries), 0, 0), dtype=np.float32)
        return self.postprocess(out, [Batch(empty, positions, symbols, timestamps)])

    def preprocess_one(self, request: dict[str, Any]) -> Batch:
        """Decode and check one request's body (binary or JSON) against the model card."""
        card = self._card()
        body = request.get("body")
        if body is None:
            body = request.get("data")
        return decode(
            body, window=card.window, features=card.features, max_windows=self.max_windows
        )

    def preprocess(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Concatenate the requests' windows, scale them with the card's scaler, as tensors."""
        assert self.scaler is not None
        windows = np.concatenate([b.windows for b in batches])
        positions = np.concatenate([b.positions for b in batches])
        x = torch.from_numpy(self.scaler.transform(windows))
        return x, torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float32))

    def inference(
        self, data: tuple[torch.Tensor, torch.Tensor], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """One forward pass of the network over all windows."""
        assert self.net is not None
        with torch.inference_mode():
            return self.net(*data)  # type: ignore[no-any-return]

    def postprocess(
        self, out: dict[str, torch.Tensor], batches: list[Batch]
    ) -> list[dict[str, Any]]:  # type: ignore[override]
        """One ``Signal`` dict per window (probabilities from the logits), in request order."""
        card = self._card()
        price = out["price"].double().numpy()
        direction = torch.softmax(out["direction"].double(), dim=-1).numpy()
        action = torch.softmax(out["action"].double(), dim=-1).numpy()
        scalars = {k: out[k].double().numpy() for k in ("size", "volatility", "risk", "confidence")}
        symbols = [s for b in batches for s in b.symbols]
        stamps = [t for b in batches for t in b.timestamps]
        horizons = tuple(int(h) for h in card.horizons)
        result = []
        for i in range(len(price)):
            sig = Signal(
                model=card.name,
                version=card.version,
                returns=tuple(float(v) for v in price[i]),
                horizons=horizons,
                direction=(float(direction[i, 0]), float(direction[i, 1]), float(direction[i, 2])),
                action=(float(action[i, 0]), float(action[i, 1]), float(action[i, 2])),
                size=float(scalars["size"][i]),
                volatility=float(scalars["volatility"][i]),
                risk=float(scalars["risk"][i]),
                confidence=float(scalars["confidence"][i]),
                symbol=symbols[i],
                timestamp=stamps[i],
            )
            result.append(sig.to_dict())
        return result

    def _card(self) -> ModelCard:
        if self.card is None:
            raise RuntimeError("the handler is not initialised; call initialize(context) first")
        return self.card


def _refusal(err: BadRequest, context: Any, idx: int) -> str:
    """The JSON body of a refused request; its status is 409 for a stream that cannot
    continue (``reason`` gap or lost), 413 for too many windows (with the limit, so a client
    splits), else 400."""
    body: dict[str, Any] = {"code": 400, "type": "BadRequest", "message": str(err)}
    if isinstance(err, StreamConflict):
        body |= {"code": 409, "type": type(err).__name__, "reason": err.reason}
        context.set_response_status(code=409, phrase="Conflict", idx=idx)
    elif isinstance(err, TooManyWindows):
        body |= {"code": 413, "type": "TooManyWindows", "max_windows": err.limit}
        context.set_response_status(code=413, phrase="Payload Too Large", idx=idx)
    else:
        context.set_response_status(code=400, phrase="Bad Request", idx=idx)
    return json.dumps(body)


def _parts(values: Any, batches: list[Any]) -> list[Any]:
    """``values`` (one per window, in order) cut into each request's share."""
    out, start = [], 0
    for b in batches:
        out.append(values[start : start + len(b)])
        start += len(b)
    return out
