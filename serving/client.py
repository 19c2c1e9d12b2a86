"""Signal clients: ``SignalClient.predict(windows, positions) -> list[Signal]``.

Two implementations return the same numbers on the same input (a parity test checks 1e-5):

* ``RestClient`` calls a TorchServe over REST: one keep-alive session, one deadline per call
  across its retries with backoff (the call is idempotent), a circuit breaker counting server
  faults only, the inference token (read again once when refused), binary payloads. When the
  server cannot answer it raises ``ServingUnavailable`` within the deadline, never hangs and
  never returns a made-up signal; a request the server refuses (4xx) raises ``BadRequest``.
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

from core.config import DataConfig
from core.errors import ConfigError, ModelNotFound, TransientError
from mlmodels.registry import ModelCard, ModelRegistry
from serving.paths import CONTENT_TYPE as PATHS_CONTENT_TYPE
from serving.paths import decode_summaries
from serving.payload import BadRequest, TooManyWindows, encode_binary, encode_json
from serving.signal import PositionState, Signal
from serving.streams import StateLost, StreamGap


class ServingUnavailable(TransientError):
    """The model server did not answer (down, timing out, failing, or the breaker is open)."""


class TokenRefused(ServingUnavailable):
    """The server refused the inference token, also after the key file was read again."""


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


class PathRequests:
    """The path-summary requests of batched and streamed inference, for a client that
    answers a binary body with ``_summaries(body, expected)``."""

    def _summaries(self, body: bytes, expected: int) -> np.ndarray:
        raise NotImplementedError

    def paths(self, windows: np.ndarray) -> np.ndarray:
        """The model's path summaries ``(N, D)`` for windows ``(N, W, F)`` (one request; a
        server that takes fewer windows raises ``TooManyWindows`` with its limit)."""
        return self._summaries(encode_binary(windows, None, paths_only=True), len(windows))

    def stream_paths(
        self,
        session: str,
        symbols: Sequence[str],
        prev: Sequence[str | None],
        last: Sequence[str],
        rows: np.ndarray,
    ) -> np.ndarray:
        """Continue streams (:mod:`serving.streams`): ``rows`` ``(N, T, F)`` raw features
        of each stream's bars after ``prev`` (None: a new stream) up to ``last``; returns the
        path outputs ``(N, T, D)``. Raises ``StreamGap`` / ``StateLost`` (HTTP 409) when a
        stream cannot continue."""
        body = encode_binary(rows, None, symbols, last, paths_only=True, session=session,
                             prev=prev)  # fmt: skip
        n, t = rows.shape[:2]
        return self._summaries(body, n * t).reshape(n, t, -1)


class InProcessClient(PathRequests, SignalClient):
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
        return [Signal.from_dict(d) for d in json.loads(self._handle(body))]

    def _summaries(self, body: bytes, expected: int) -> np.ndarray:
        """A path-summaries request answered through the handler, as TorchServe would."""
        return decode_summaries(self._handle(body), expected)

    def _handle(self, body: bytes) -> Any:
        """The handler's answer to one request body, as TorchServe's worker would give it;
        a refusal raises its error (``refusal_error``)."""
        with self._lock:  # one handler, like one TorchServe worker
            self.context.request_processor = [self._request_processor({})]
            out = self.handler.handle([{"body": body}], self.context)
            code, _ = self.context.get_response_status(0)
        if code not in (None, 200):
            raise refusal_error(json.loads(out[0]))
        return out[0]

    def from_paths(
        self,
        summaries: np.ndarray,
        positions: np.ndarray | Sequence[PositionState] | None = None,
        *,
        symbols: Sequence[str | None] | None = None,
        timestamps: Sequence[str | None] | None = None,
    ) -> list[Signal]:
        """Signals from path summaries (this model's, from :meth:`paths` here or a server's)
        and the position states: the fusion and the heads, in-process."""
        n = len(summaries)
        given = as_positions(positions, n)
        pos = np.zeros((n, 3), np.float32) if given is None else given
        with self._lock:
            dicts = self.handler.signals_from_paths(
                summaries, pos, list(symbols or [None] * n), list(timestamps or [None] * n)
            )
        return [Signal.from_dict(d) for d in dicts]


@dataclass(frozen=True, kw_only=True)
class RestConfig(DataConfig):
    """Where and how ``RestClient`` calls TorchServe.

    Attributes:
        url: the inference address.
        model: the registered model name; ``version`` None means the server's default version.
        token: the inference key; if None it is read from ``key_file`` (TorchServe's
            ``key_file.json``), and read again once when the server refuses it.
        deadline_s: the whole call's time budget, retries included: no attempt starts after
            it, and each attempt waits at most the time left. Keep it shorter than a bar.
        connect_timeout, read_timeout: caps per attempt, seconds (within the deadline).
        retries: extra attempts after a connection error, timeout or 5xx (backoff doubles).
            Client errors (4xx) are never retried and do not count toward the breaker.
        breaker_failures: consecutive failed calls that open the breaker; while open, calls fail
            at once with ``ServingUnavailable`` for ``breaker_cooldown`` seconds.
        binary: send the binary payload (else JSON).
    """

    url: str = "http://127.0.0.1:8080"
    model: str
    version: int | None = None
    token: str | None = None
    key_file: Path | None = None
    deadline_s: float = 10.0
    connect_timeout: float = 1.0
    read_timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.1
    breaker_failures: int = 3
    breaker_cooldown: float = 5.0
    binary: bool = True

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("deadline_s, connect_timeout and read_timeout must be > 0 seconds")
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


def _server_fault(status: int) -> bool:
    """5xx, a request timeout or throttling: retried, and counted by the breaker. Any other
    4xx is the client's error: raised at once, not counted."""
    return status >= 500 or status in (408, 429)


class RestClient(PathRequests, SignalClient):
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
            r = self._post(body, ctype)
            signals = _signals(_json(r, self.endpoint), self.endpoint, len(windows))
        except ServingUnavailable:
            self.breaker.failure()
            raise
        self.breaker.success()
        return signals

    def _summaries(self, body: bytes, expected: int) -> np.ndarray:
        """POST a path-summaries request; its ``(expected, D)`` answer."""
        self.breaker.check()
        try:
            r = self._post(body, "application/octet-stream")
            if not r.headers.get("Content-Type", "").startswith(PATHS_CONTENT_TYPE):
                raise ServingUnavailable(
                    f"{self.endpoint}: answered {r.headers.get('Content-Type')!r} to a "
                    "path-summaries request (a model archive from before batched inference? "
                    "rebuild it with btml serve start)"
                )
            summaries = decode_summaries(r.content, expected)
        except ServingUnavailable:
            self.breaker.failure()
            raise
        self.breaker.success()
        return summaries

    def _post(self, body: bytes, ctype: str) -> requests.Response:
        """POST within one deadline: retry server faults, re-read a refused token once; the
        first 200 answer."""
        cfg = self.cfg
        start = time.monotonic()
        deadline, last, attempts, refreshed = start + cfg.deadline_s, "", 0, False
        while (left := deadline - time.monotonic()) > 0:
            attempts += 1
            try:
                r = self._send(body, ctype, left)
            except (requests.ConnectionError, requests.Timeout) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if r.status_code == 200:
                    return r
                if _auth_failed(r) and not refreshed and cfg.key_file is not None:
                    self._token, refreshed = None, True  # the key may have been rotated
                    continue
                if _auth_failed(r) or not _server_fault(r.status_code):
                    raise self._refusal(r)
                last = f"HTTP {r.status_code}: {_message(r)}"
            pause = cfg.backoff * 2 ** (attempts - 1)
            if attempts > cfg.retries or time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        raise ServingUnavailable(
            f"model server at {self.endpoint} did not answer after {attempts} attempts in "
            f"{time.monotonic() - start:.1f} s (deadline {cfg.deadline_s:g} s; {last or 'no time left'})"
        )

    def _send(self, body: bytes, ctype: str, left: float) -> requests.Response:
        if self._token is None:
            self._token = self._read_token()
        headers = {"Content-Type": ctype}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        timeout = (min(self.cfg.connect_timeout, left), min(self.cfg.read_timeout, left))
        return self.session.post(self.endpoint, data=body, headers=headers, timeout=timeout)

    def _refusal(self, r: requests.Response) -> Exception:
        """The error for a 4xx: ``TokenRefused`` for a refused token, else a client error."""
        if not _auth_failed(r):
            return _client_error(r, self.endpoint)
        where = f"after reading {self.cfg.key_file} again" if self.cfg.key_file else "(fixed token)"
        return TokenRefused(
            f"{self.endpoint}: the inference token was refused {where} ({_message(r)}); "
            "if it expired, renew it with: btml serve renew-token"
        )

    def close(self) -> None:
        self.session.close()


def refusal_error(answer: dict[str, Any], prefix: str = "") -> BadRequest:
    """The error for the handler's refusal ``answer`` (its JSON body)."""
    msg = prefix + str(answer.get("message", answer))
    if answer.get("reason") == "gap":
        return StreamGap(msg)
    if answer.get("reason") == "lost":
        return StateLost(msg)
    if isinstance(answer.get("max_windows"), int) and answer["max_windows"] > 0:
        return TooManyWindows(msg, int(answer["max_windows"]))
    return BadRequest(msg)


def _json(r: requests.Response, endpoint: str) -> Any:
    try:
        return r.json()
    except ValueError as err:
        raise ServingUnavailable(
            f"{endpoint}: unreadable answer (HTTP 200, not JSON: {r.text.strip()[:80]!r})"
        ) from err


def _signals(data: Any, endpoint: str, n: int) -> list[Signal]:
    """``n`` signals from an answer, or ``ServingUnavailable``: a garbled answer is a fault."""
    try:
        signals = [Signal.from_dict(d) for d in data]
    except (TypeError, KeyError, ValueError) as err:
        raise ServingUnavailable(
            f"{endpoint}: unreadable answer (not a list of signals: {err!r})"
        ) from err
    if len(signals) != n:
        raise ServingUnavailable(
            f"{endpoint}: unreadable answer ({len(signals)} signals for {n} windows)"
        )
    return signals


def _message(r: requests.Response) -> str:
    """The server's message on one line: the JSON ``message``, else the start of the text."""
    try:
        body = r.json()
        text = str(body.get("message", r.text)) if isinstance(body, dict) else r.text
    except ValueError:
        text = r.text
    return " ".join(text.split())[:300]


def _auth_failed(r: requests.Response) -> bool:
    """TorchServe 0.12 answers a missing or wrong token with 400 InvalidKeyException."""
    return r.status_code == 401 or (r.status_code == 400 and "InvalidKeyException" in r.text)


def _client_error(r: requests.Response, endpoint: str) -> Exception:
    msg = _message(r)
    if r.status_code == 400:
        return BadRequest(f"the server refused the request: {msg}")
    if r.status_code == 404:
        return ModelNotFound(f"{endpoint}: {msg}")
    if r.status_code == 409:
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        if isinstance(answer, dict) and answer.get("reason") in ("gap", "lost"):
            return refusal_error(answer, f"{endpoint}: ")
    if r.status_code == 413:
        limit = _max_windows(r)
        if limit is not None:
            return TooManyWindows(f"the server refused the request: {msg}", limit)
        return BadRequest(f"the request is larger than the server accepts (HTTP 413): {msg}")
    if 400 <= r.status_code < 500:
        return BadRequest(f"the server refused the request (HTTP {r.status_code}): {msg}")
    return ServingUnavailable(f"{endpoint}: unexpected HTTP {r.status_code}: {msg}")


def _max_windows(r: requests.Response) -> int | None:
    """The handler's window limit in a 413 answer (None for the frontend's own 413)."""
    try:
        body = r.json()
    except ValueError:
        return None
    limit = body.get("max_windows") if isinstance(body, dict) else None
    return limit if isinstance(limit, int) and limit > 0 else None
