"""Path summaries over REST: the request flag and the binary answer.

A batched backtest asks the server for the model's *path summaries* only (the xLSTM and
Transformer paths' outputs for each window, before the fusion and the heads, which take the
position state). The request is the usual binary body (:mod:`serving.payload`) with bit 0 of
its flags set (``payload.PATHS_FLAG``); the answer is binary, little-endian::

    offset  size        field
    0       4           magic b"BTMP"
    4       4           N, windows answered
    8       4           D, summary values per window
    12      4*N*D       summaries, float32, C order

A server that does not know the flag answers signals (JSON): :func:`decode_summaries` refuses
anything but this format, so a client never mistakes one for the other.
"""

from __future__ import annotations

import struct

import numpy as np

from core.errors import DataError

PATHS_MAGIC = b"BTMP"
PATHS_HEADER = struct.Struct("<4sII")
CONTENT_TYPE = "application/x-btml-paths"


def encode_summaries(summaries: np.ndarray) -> bytes:
    """Pack ``(N, D)`` summaries into the answer format."""
    s = np.ascontiguousarray(summaries, dtype="<f4")
    if s.ndim != 2:
        raise ValueError(f"summaries must be (N, D), got shape {tuple(s.shape)}")
    return PATHS_HEADER.pack(PATHS_MAGIC, s.shape[0], s.shape[1]) + s.tobytes()


def decode_summaries(raw: bytes, expected: int) -> np.ndarray:
    """The ``(N, D)`` float32 summaries of an answer that must hold ``expected`` windows."""
    if len(raw) < PATHS_HEADER.size or raw[:4] != PATHS_MAGIC:
        raise DataError(
            "the server answered a path-summaries request with something else (a server "
            "without batched inference? rebuild the model archive with this version)"
        )
    _, n, d = PATHS_HEADER.unpack_from(raw)
    if n != expected or len(raw) != PATHS_HEADER.size + 4 * n * d:
        raise DataError(
            f"path summaries: {n} x {d} announced in {len(raw)} bytes for {expected} windows"
        )
    return np.frombuffer(raw, dtype="<f4", offset=PATHS_HEADER.size).reshape(n, d)
