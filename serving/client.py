"""Signal clients: ``SignalClient.predict(windows, positions) -> list[Signal]``.

Two implementations return the same numbers on the same input (a parity test checks 1e-5):

* ``RestClient`` calls a TorchServe over REST: one keep-alive session, connect and read
  timeouts, retries with backoff (the call is idempotent), a circuit breaker, the inference
  token, binary payloads. When the server cannot answer it raises ``ServingUnavailable``
  within its time budget, never hangs and never returns a made-up signal.
* ``InProcessClient`` runs the same ``SignalHandler`` in this process, without a server.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from feeds.errors import ConfigError, SymbolNotFound, TransientError
from mlmodels.registry import ModelCard, ModelRegistry
from serving.payload import BadRequest, encode_binary, encode_json
from serving.signal import PositionState, Signal


class ServingUnavailable(TransientError):
    """The model server did not answer (down, timing out, failing, or the breaker is open)."""


def as_positions(
    positions: np.ndarray | Sequence[PositionState] | None, n: int
) -> np.ndarray | None:
    """``(n, 3)`` float32 from an array or a sequence of ``PositionState`` (None = all flat)."""
    if positions is None:
        return None
    if len(positions) and isinstance(positions[0], PositionState):
        return np.array([p.as_tuple() for p in positions], dtype=np.float32)  # type: ignore[union-attr]
    arr = np.asarray(positions, dtype=np.float32)
    if arr.shape != (n, 3):
        raise BadRequest(f"positions must be ({n}, 3), got shape {tuple(arr.shape)}")
    return arr


class SignalClient(ABC):
    """Ask a model for signals; ``windows`` are raw feature windows ``(N, W, F)``."""

    model: str

    @abstractmethod
    def predict(
        self,
        windows: np.ndarray,
        positions: np.ndarray | Sequence[PositionState] | None = None,
        *,
        symbols: Sequence[str | None] | None = None,
        timestamps: Sequence[str | None] | None = None,
    ) -> list[Signal]:
        """One ``Signal`` per window, in order."""

    def close(self) -> None:
        """Release connections (a no-op where there are none)."""
        return None

    def __enter__(self) -> SignalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessClient(SignalClient):
    """The TorchServe handler run in this process on a registry version folder.

    Build it with ``InProcessClient.from_registry(registry_root, "name[:version]")``.
    """

    def __init__(self, model_dir: str | Path, *, threads: int | None = None) -> None:
        from ts.context import Context, RequestProcessor

        from serving.handler import SignalHandler

        self._request_processor = RequestProcessor
        card = ModelCard.from_file(Path(model_dir) / "model_card.json")
        yaml_cfg = {"handler": {"threads": threads}} if threads else {}
        self.context = Context(
            card.name, str(model_dir), {}, 1, None, "btml", model_yaml_config=yaml_cfg
        )
        self.handler = SignalHandler()
        self.handler.initialize(self.context)
        self.card = card
        self.model = card.name
        self._lock = threading.Lock()

    @classmethod
    def from_registry(
        cls, root: str | Path, ref: str, *, threads: int | None = None
    ) -> InProcessClient:
        return cls(ModelRegistry(root).path(ref), threads=threads)

    def predict(
        self,
        windows: np.ndarray,
        positions: np.ndarray | Sequence[PositionState] | None = None,
        *,
        symbols: Sequence[str | None] | None = None,
        timestamps: Sequence[str | None] | None = None,
    ) -> list[Signal]:
        body = encode_binary(windows, as_positions(positions, len(windows)), symbols, timestamps)
        with self._lock:  # one handler, like one TorchServe worker
            self.context.request_processor = [self._request_processor({})]
            out = self.handler.handle([{"body": body}], self.context)
            code, _ = self.context.get_response_status(0)
        if code not in (None, 200):
            raise BadRequest(json.loads(out[0])["message"])
        return [Signal.from_dict(d) for d in json.loads(out[0])]


@dataclass(frozen=True, kw_only=True)
class RestConfig:
    """Where and how ``RestClient`` calls TorchServe.

    Attributes:
        url: the inference address.
        model: the registered model name; ``version`` None means the server's default version.
        token: the inference key; if None it is read from ``key_file`` (TorchServe's
            ``key_file.json``), and read again when the server answers 401.
        connect_timeout, read_timeout: seconds, per attempt.
        retries: extra attempts after a connection error, timeout or 5xx (backoff doubles).
        breaker_failures: consecutive failed calls that open the breaker; while open, calls fail
            at once with ``ServingUnavailable`` for ``breaker_cooldown`` seconds.
        binary: send the binary payload (else JSON).
    """

    url: str = "http://127.0.0.1:8080"
    model: str
    version: int | None = None
    token: str | None = None
    key_file: Path | None = None
    connect_timeout: float = 1.0
    read_timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.1
    breaker_failures: int = 3
    breaker_cooldown: float = 5.0
    binary: bool = True

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("connect_timeout and read_timeout must be > 0 seconds")
        if self.retries < 0 or self.breaker_failures < 1 or self.breaker_cooldown < 0:
            raise ConfigError("retries must be >= 0, breaker_failures >= 1, breaker_cooldown >= 0")


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown``
    seconds (one trial call) -> closed on success, open again on failure."""

    def __init__(self, failures: int, cooldown: float, clock: Any = time.monotonic) -> None:
        self.failures, self.cooldown, self.clock = failures, cooldown, clock
        self.count = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def check(self) -> None:
        if self.state == "open":
            left = self.cooldown - (self.clock() - (self.opened_at or 0.0))
            raise ServingUnavailable(
                f"model server failed {self.count} times in a row; not calling it for "
                f"{left:.1f} s more (circuit breaker open)"
            )

    def success(self) -> None:
        self.count, self.opened_at = 0, None

    def failure(self) -> None:
        self.count += 1
        if self.count >= self.failures or self.opened_at is not None:
            self.opened_at = self.clock()


_RETRY_STATUS = {500, 502, 503, 504, 507}


class RestClient(SignalClient):
    """``predict`` over TorchServe's inference API (see ``RestConfig`` and the README's REST
    contract). Thread-safe; reuse one client for many calls (one keep-alive session)."""

    def __init__(self, cfg: RestConfig) -> None:
        self.cfg = cfg
        self.model = cfg.model
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown)
        self.session = requests.Session()
        self.session.headers["Connection"] = "keep-alive"
        self._token = cfg.token
        self._lock = threading.Lock()
        path = f"/predictions/{cfg.model}" + (f"/{cfg.version}" if cfg.version else "")
        self.endpoint = cfg.url.rstrip("/") + path

    @classmethod
    def for_server(cls, home: Path, model: str, **kwargs: Any) -> RestClient:
        """A client for the server started from ``home`` (its ports and key file)."""
        from serving.server import ServerConfig, read_state

        state = read_state(ServerConfig(home=home))
        if state is None:
            raise ServingUnavailable(f"no TorchServe is running from {home}; btml serve start")
        url = f"http://127.0.0.1:{state.inference_port}"
        return cls(RestConfig(url=url, model=model, key_file=home / "key_file.json", **kwargs))

    def _read_token(self) -> str | None:
        if self.cfg.key_file is None:
            return self._token
        try:
            return str(json.loads(self.cfg.key_file.read_text())["inference"]["key"])
        except (OSError, ValueError, KeyError) as err:
            raise ServingUnavailable(
                f"cannot read the inference token from {self.cfg.key_file} ({err})"
            ) from err

    def predict(
        self,
        windows: np.ndarray,
        positions: np.ndarray | Sequence[PositionState] | None = None,
        *,
        symbols: Sequence[str | None] | None = None,
        timestamps: Sequence[str | None] | None = None,
    ) -> list[Signal]:
        pos = as_positions(positions, len(windows))
        if self.cfg.binary:
            body: bytes = encode_binary(windows, pos, symbols, timestamps)
            ctype = "application/octet-stream"
        else:
            body = json.dumps(encode_json(windows, pos, symbols, timestamps)).encode()
            ctype = "application/json"
        self.breaker.check()
        try:
            data = self._post(body, ctype)
        except ServingUnavailable:
            self.breaker.failure()
            raise
        self.breaker.success()
        return [Signal.from_dict(d) for d in data]

    def _post(self, body: bytes, ctype: str) -> list[dict[str, Any]]:
        cfg, last = self.cfg, ""
        refreshed = False
        attempt = 0
        while attempt <= cfg.retries:
            if self._token is None:
                self._token = self._read_token()
            headers = {"Content-Type": ctype}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            try:
                r = self.session.post(
                    self.endpoint, data=body, headers=headers,
                    timeout=(cfg.connect_timeout, cfg.read_timeout),
                )  # fmt: skip
            except (requests.ConnectionError, requests.Timeout) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if r.status_code == 200:
                    return r.json()  # type: ignore[no-any-return]
                if _auth_failed(r) and not refreshed and cfg.key_file is not None:
                    self._token, refreshed = None, True  # the key may have been rotated
                    continue
                if r.status_code not in _RETRY_STATUS:
                    raise _client_error(r, self.endpoint)
                last = f"HTTP {r.status_code}: {_message(r)}"
            attempt += 1
            if attempt <= cfg.retries:
                time.sleep(cfg.backoff * 2 ** (attempt - 1))
        raise ServingUnavailable(
            f"model server at {self.endpoint} did not answer after {cfg.retries + 1} attempts ({last})"
        )

    def close(self) -> None:
        self.session.close()


def _message(r: requests.Response) -> str:
    try:
        return str(r.json().get("message", r.text))
    except ValueError:
        return r.text.strip()[:300]


def _auth_failed(r: requests.Response) -> bool:
    """TorchServe 0.12 answers a missing or wrong token with 400 InvalidKeyException."""
    return r.status_code == 401 or (r.status_code == 400 and "InvalidKeyException" in r.text)


def _client_error(r: requests.Response, endpoint: str) -> Exception:
    msg = _message(r)
    if _auth_failed(r):
        return ConfigError(f"{endpoint}: token refused ({msg}); check the server's key file")
    if r.status_code == 400:
        return BadRequest(f"the server refused the request: {msg}")
    if r.status_code == 404:
        return SymbolNotFound(f"{endpoint}: {msg}")
    if r.status_code == 413:
        return BadRequest(f"the request is larger than the server accepts (HTTP 413): {msg}")
    return ServingUnavailable(f"{endpoint}: HTTP {r.status_code}: {msg}")
