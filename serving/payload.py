"""The REST contract's request bodies: binary float32 (fast) and JSON (convenient).

Binary (``Content-Type: application/octet-stream``), little-endian::

    offset  size        field
    0       4           magic b"BTML"
    4       2           format version (1)
    6       2           flags: bit 0 asks for the paths' summaries (serving.paths); bit 1
                        continues streams (serving.streams): the N "windows" are N streams'
                        next W bars each, and the metadata names the session and the streams
    8       4           N, windows in the request
    12      4           W, bars per window
    16      4           F, features per bar
    20      4           P, position-state values per window (0 = all flat, or 3)
    24      4*N*W*F     windows, float32, C order (window, bar, feature), raw (unscaled) features
    ...     4*N*P       positions, float32: position, unrealised log P&L, bars held
    ...     4           M, bytes of UTF-8 JSON metadata (0 = none)
    ...     M           {"symbols": [...], "timestamps": [...]} (optional, echoed in the response)

A stream request's metadata is required: ``{"session": id, "symbols": [one per stream],
"prev": [the bar each stream continues from, or null for a new stream], "timestamps": [each
stream's last bar]}``; with bit 0 the answer is every bar's path outputs (``N * W`` rows),
otherwise the signal at each stream's last bar (with the positions given).

JSON (``Content-Type: application/json``)::

    {"windows": [[[f, ...], ...], ...], "positions": [[p, u, b], ...],
     "symbols": [...], "timestamps": [...]}

``positions``, ``symbols`` and ``timestamps`` are optional. The features are the model card's
``features`` in that order, unscaled: the server applies the card's scaler.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import DataError

MAGIC = b"BTML"
FORMAT_VERSION = 1
PATHS_FLAG = 1  # bit 0 of the reserved field: answer the paths' summaries (serving.paths)
STREAM_FLAG = 2  # bit 1: continue streams of a streaming preset (serving.streams)
HEADER = struct.Struct("<4sHHIIII")
POSITION_FIELDS = 3


class BadRequest(DataError):
    """A request the server refuses with HTTP 400: the message says what was expected."""


class TooManyWindows(BadRequest):
    """More windows in one request than the server takes (HTTP 413): split at ``limit``."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class Batch:
    """Decoded windows ``(N, W, F)`` float32, positions ``(N, 3)`` float32, and echo metadata."""

    windows: np.ndarray
    positions: np.ndarray
    symbols: list[str | None]
    timestamps: list[str | None]
    paths_only: bool = False
    session: str | None = None  # a stream request's session (serving.streams), else None
    prev: list[str | None] | None = None  # the bar each stream continues from

    @property
    def streaming(self) -> bool:
        return self.session is not None

    def __len__(self) -> int:
        return int(self.windows.shape[0])


def encode_binary(
    windows: np.ndarray,
    positions: np.ndarray | None = None,
    symbols: Sequence[str | None] | None = None,
    timestamps: Sequence[str | None] | None = None,
    *,
    paths_only: bool = False,
    session: str | None = None,
    prev: Sequence[str | None] | None = None,
) -> bytes:
    """Pack windows ``(N, W, F)`` (and optional positions ``(N, 3)``) into the binary format;
    ``paths_only`` asks for the paths' summaries instead of signals (:mod:`serving.paths`);
    ``session`` (with ``symbols``, ``prev`` and ``timestamps``) continues streams."""
    w = np.ascontiguousarray(windows, dtype="<f4")
    if w.ndim != 3:
        raise BadRequest(f"windows must be (N, W, F), got shape {tuple(w.shape)}")
    n = w.shape[0]
    p = np.zeros((0,), dtype="<f4")
    if positions is not None:
        p = np.ascontiguousarray(positions, dtype="<f4")
        if p.shape != (n, POSITION_FIELDS):
            raise BadRequest(f"positions must be ({n}, 3), got shape {tuple(p.shape)}")
    meta = b""
    fields: dict[str, Any] = {}
    if symbols is not None or timestamps is not None:
        fields = {"symbols": list(symbols or []), "timestamps": list(timestamps or [])}
    if session is not None:
        fields |= {"session": session, "prev": list(prev or [None] * n)}
    if fields:
        meta = json.dumps(fields).encode()
    flags = (PATHS_FLAG if paths_only else 0) | (STREAM_FLAG if session is not None else 0)
    head = HEADER.pack(
        MAGIC, FORMAT_VERSION, flags, n, w.shape[1], w.shape[2], POSITION_FIELDS if p.size else 0
    )
    return b"".join([head, w.tobytes(), p.tobytes(), struct.pack("<I", len(meta)), meta])


def encode_json(
    windows: np.ndarray,
    positions: np.ndarray | None = None,
    symbols: Sequence[str | None] | None = None,
    timestamps: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """The JSON form of the same request (floats as float32 values)."""
    body: dict[str, Any] = {"windows": np.asarray(windows, dtype=np.float32).tolist()}
    if positions is not None:
        body["positions"] = np.asarray(positions, dtype=np.float32).tolist()
    if symbols is not None:
        body["symbols"] = list(symbols)
    if timestamps is not None:
        body["timestamps"] = list(timestamps)
    return body


def decode(body: Any, *, window: int, features: list[str], max_windows: int) -> Batch:
    """Decode and check one request body (bytes in either format, or an already parsed dict).

    Raises ``BadRequest`` naming the expected and received shapes, or the window, bar and
    feature of the first NaN or infinite value. A binary header's counts are checked against
    the limits before anything is allocated.
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
        if raw[:4] == MAGIC:
            batch = _decode_binary(raw, window=window, features=features, max_windows=max_windows)
        else:
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                raise BadRequest(
                    "the body is neither the binary format (magic BTML) nor JSON"
                ) from err
            batch = _decode_json(parsed)
    elif isinstance(body, dict):
        batch = _decode_json(body)
    elif isinstance(body, str):
        return decode(
            body.encode("utf-8"), window=window, features=features, max_windows=max_windows
        )
    else:
        raise BadRequest(f"empty or unreadable request body ({type(body).__name__})")
    _check(batch, window=window, features=features, max_windows=max_windows)
    return batch


def _decode_binary(raw: bytes, *, window: int, features: list[str], max_windows: int) -> Batch:
    if len(raw) < HEADER.size:
        raise BadRequest(f"binary body of {len(raw)} bytes is shorter than the 24-byte header")
    _, version, flags, n, w, f, p = HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise BadRequest(f"binary format version {version} is not {FORMAT_VERSION}")
    if p not in (0, POSITION_FIELDS):
        raise BadRequest(f"position fields must be 0 or 3, got {p}")
    stream = bool(flags & STREAM_FLAG)
    _check_counts(n, w, f, window=window, features=features, max_windows=max_windows,
                  stream=stream)  # fmt: skip
    n_win, n_pos = n * w * f, n * p
    need = HEADER.size + 4 * (n_win + n_pos) + 4
    if len(raw) < need:
        raise BadRequest(
            f"binary body holds {len(raw)} bytes; the header (N={n}, W={w}, F={f}, P={p}) "
            f"needs at least {need}"
        )
    values = np.frombuffer(raw, dtype="<f4", count=n_win + n_pos, offset=HEADER.size)
    windows = values[:n_win].reshape(n, w, f)
    positions = (
        values[n_win:].reshape(n, p) if p else np.zeros((n, POSITION_FIELDS), dtype=np.float32)
    )
    (m,) = struct.unpack_from("<I", raw, need - 4)
    meta: Any = {}
    if m:
        try:
            meta = json.loads(raw[need : need + m].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise BadRequest("binary body metadata is not valid UTF-8 JSON") from err
    if not isinstance(meta, dict):
        raise BadRequest(f"binary body metadata must be a JSON object, got {type(meta).__name__}")
    batch = _batch(windows, positions, meta.get("symbols"), meta.get("timestamps"))
    batch = dataclasses.replace(batch, paths_only=bool(flags & PATHS_FLAG))
    return _stream_fields(batch, meta) if stream else batch


def _stream_fields(batch: Batch, meta: dict[str, Any]) -> Batch:
    """A stream request's session and ``prev`` from its metadata, checked."""
    session, prev = meta.get("session"), meta.get("prev")
    if not isinstance(session, str) or not session or len(session) > 200:
        raise BadRequest("a stream request needs a 'session' id (1-200 characters) in its metadata")
    if None in batch.symbols or None in batch.timestamps:
        raise BadRequest("a stream request names every stream's symbol and last bar time")
    if len(set(batch.symbols)) != len(batch.symbols):
        raise BadRequest("a stream request names each symbol once")
    if not isinstance(prev, list) or len(prev) != len(batch):
        raise BadRequest(f"a stream request needs 'prev' (one per stream, {len(batch)})")
    return dataclasses.replace(
        batch, session=session, prev=[None if v is None else str(v) for v in prev]
    )


def _decode_json(body: Any) -> Batch:
    if not isinstance(body, dict):
        raise BadRequest(
            f"JSON body must be an object with a 'windows' key, got {type(body).__name__}"
        )
    if "windows" not in body:
        raise BadRequest(f"JSON body needs a 'windows' key, got keys {sorted(body)}")
    try:
        windows = np.asarray(body["windows"], dtype=np.float32)
        pos = body.get("positions")
        positions = (
            np.asarray(pos, dtype=np.float32)
            if pos is not None
            else np.zeros((len(windows), POSITION_FIELDS), dtype=np.float32)
        )
    except (ValueError, TypeError) as err:
        raise BadRequest(
            f"'windows' must be a list of equally long lists of numbers ({err})"
        ) from err
    if windows.ndim != 3:
        raise BadRequest(
            f"'windows' must be 3-dimensional (windows, bars, features), got {windows.ndim} "
            f"dimensions {tuple(windows.shape)}"
        )
    if positions.shape != (len(windows), POSITION_FIELDS):
        raise BadRequest(
            f"'positions' must be {len(windows)} x 3 (position, unrealised, bars held), got "
            f"{tuple(positions.shape)}"
        )
    return _batch(windows, positions, body.get("symbols"), body.get("timestamps"))


def _batch(windows: np.ndarray, positions: np.ndarray, symbols: Any, timestamps: Any) -> Batch:
    n = len(windows)

    def echo(values: Any, what: str) -> list[str | None]:
        if values is None or (isinstance(values, list) and not values):
            return [None] * n
        if not isinstance(values, list):
            raise BadRequest(f"{what} must be a list (one per window), got {type(values).__name__}")
        if len(values) != n:
            raise BadRequest(f"{len(values)} {what} for {n} windows")
        return [None if v is None else str(v) for v in values]

    return Batch(windows, positions, echo(symbols, "symbols"), echo(timestamps, "timestamps"))


def _check_counts(
    n: int, w: int, f: int, *, window: int, features: list[str], max_windows: int,
    stream: bool = False,
) -> None:  # fmt: skip
    """Refuse a request's counts (from a header, before allocating) or its decoded shape
    (a stream request: any number of bars, at most ``max_windows * window`` in all)."""
    if n == 0:
        raise BadRequest("the request holds no windows")
    if stream:
        if w == 0 or n * w > max_windows * window:
            raise BadRequest(
                f"{n} streams x {w} bars; a stream request holds 1 to {max_windows * window} "
                "bars in all"
            )
        if f != len(features):
            raise BadRequest(f"expected {len(features)} features per bar, received {f}")
        return
    if n > max_windows:
        raise TooManyWindows(
            f"{n} windows in one request; at most {max_windows} are allowed", max_windows
        )
    if (w, f) != (window, len(features)):
        raise BadRequest(
            f"expected windows of {window} bars x {len(features)} features, "
            f"received {w} bars x {f} features"
        )


def _check(batch: Batch, *, window: int, features: list[str], max_windows: int) -> None:
    n, w, f = batch.windows.shape
    _check_counts(n, w, f, window=window, features=features, max_windows=max_windows,
                  stream=batch.streaming)  # fmt: skip
    bad = ~np.isfinite(batch.windows)
    if bad.any():
        i, t, k = (int(v) for v in np.argwhere(bad)[0])
        raise BadRequest(
            f"window {i} ({batch.symbols[i] or 'no symbol'}), bar {t}: feature {features[k]} is "
            f"{batch.windows[i, t, k]}; {int(bad.sum())} non-finite values in all"
        )
    if not np.isfinite(batch.positions).all():
        i = int(np.argwhere(~np.isfinite(batch.positions))[0][0])
        raise BadRequest(f"window {i}: position state {batch.positions[i].tolist()} is not finite")
