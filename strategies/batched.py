"""Batched inference for backtests: the model's window paths scored ahead, in chunks.

The position state enters only the fusion and the heads; the xLSTM and Transformer paths read
the feature window alone. In a backtest every window is known before the run (the features are
precomputed causally, :mod:`strategies.windows`), so the paths' summaries for the next
``chunk`` bars of every symbol are computed in one request (split at the server's
``max_windows``) the first time the strategy needs one of them; at each bar the strategy then
sends only the summaries and its live position state through the fusion and the heads
(microseconds, in-process). The summary of bar ``t`` comes from the window ending at ``t``
alone, so a prediction at ``t`` never depends on later bars; scoring ahead only changes when
it is computed.

:class:`PathCache` keeps the summaries; ``score`` is any callable from windows ``(N, window,
F)`` to summaries ``(N, D)`` (the signal client's ``summaries``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from serving.payload import TooManyWindows
from serving.signal import Signal
from strategies.windows import FeatureWindows, SymbolFeatures

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray], np.ndarray]
DEFAULT_CHUNK = 256


class PathCache:
    """Path summaries by (symbol, bar time), filled ``chunk`` bars ahead of the strategy.

    ``max_request`` caps the windows of one call to ``score`` (a chunk larger than the server
    accepts is split, never refused). ``requests`` and ``windows_scored`` count the calls and
    windows sent, for the run's log and the benchmarks.
    """

    def __init__(
        self,
        windows: FeatureWindows,
        score: Score,
        *,
        chunk: int = DEFAULT_CHUNK,
        max_request: int = 4096,
    ) -> None:
        if chunk < 1 or max_request < 1:
            raise ValueError(f"chunk and max_request must be >= 1, got {chunk}, {max_request}")
        self.windows = windows
        self.score = score
        self.chunk = chunk
        self.max_request = max_request
        self.requests = 0
        self.windows_scored = 0
        self._rows: dict[str, dict[int, np.ndarray]] = {s: {} for s in windows.symbols}
        self._span: dict[str, tuple[int, int]] = {s: (0, 0) for s in windows.symbols}

    def get(self, symbol: str, ts_ns: int) -> np.ndarray | None:
        """The summary of ``symbol``'s window ending at ``ts_ns`` (None: no full window there)."""
        feats = self.windows.symbols.get(symbol)
        if feats is None:
            return None
        i = int(np.searchsorted(feats.times, ts_ns, side="left"))
        if i >= len(feats.times) or feats.times[i] != ts_ns:
            return None
        lo, hi = self._span[symbol]
        if not lo <= i < hi:
            self._fill(ts_ns)
        return self._rows[symbol].get(i)

    def _fill(self, ts_ns: int) -> None:
        """Cover the next ``chunk`` bars at or after ``ts_ns`` of every symbol, scoring only the
        windows not scored yet (in one call, split at ``max_request``); forget the past."""
        todo: list[tuple[str, np.ndarray]] = []
        parts: list[np.ndarray] = []
        for sym, feats in self.windows.symbols.items():
            first = int(np.searchsorted(feats.times, ts_ns, side="left"))
            lo, hi = self._span[sym]
            rows = self._rows[sym]
            self._rows[sym] = {i: r for i, r in rows.items() if i >= first}
            start = max(first, hi) if lo <= first <= hi else first
            stop = min(first + self.chunk, len(feats.times))
            self._span[sym] = (first, max(stop, hi if lo <= first <= hi else stop))
            ends, wins = _windows(feats, self.windows.window, start, stop)
            todo.append((sym, ends))
            parts.append(wins)
        batch = np.concatenate(parts)
        if not len(batch):
            return
        summaries = self._score_all(batch)
        at = 0
        for sym, ends in todo:
            for i in ends:
                self._rows[sym][int(i)] = summaries[at]
                at += 1

    def _score_all(self, batch: np.ndarray) -> np.ndarray:
        """Every window of ``batch`` in requests of at most ``max_request``; a server that
        takes fewer (``TooManyWindows``) lowers the limit to its own and the batch is split
        again, never failed."""
        while True:
            try:
                return np.concatenate([self._score(batch[i : i + self.max_request])
                                       for i in range(0, len(batch), self.max_request)])  # fmt: skip
            except TooManyWindows as err:
                if err.limit >= self.max_request:
                    raise
                log.info("the server takes %d windows per request; splitting", err.limit)
                self.max_request = err.limit

    def _score(self, windows: np.ndarray) -> np.ndarray:
        got = np.asarray(self.score(windows))
        if got.ndim != 2 or len(got) != len(windows):
            raise ValueError(
                f"the path scorer answered shape {got.shape} for {len(windows)} windows"
            )
        self.requests += 1
        self.windows_scored += len(windows)
        return got


def _windows(
    feats: SymbolFeatures, window: int, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """The positions in ``start .. stop - 1`` that end a full, finite window, and those windows
    ``(n, window, F)`` (a copy, gathered from a strided view of the feature rows)."""
    ends = np.arange(max(start, window - 1), max(stop, start))
    ends = ends[feats.bad[ends + 1] == feats.bad[ends + 1 - window]]
    view = np.lib.stride_tricks.sliding_window_view(feats.values, window, axis=0)
    return ends, np.ascontiguousarray(view[ends - window + 1].transpose(0, 2, 1))


class BatchedSignals:
    """Signals per bar from path summaries scored ahead (the module docstring).

    ``paths``: a client with ``paths(windows) -> (N, D)`` (a ``RestClient`` to a served
    model, or an ``InProcessClient``); ``tail``: an ``InProcessClient`` of the same model
    version, which runs the fusion and the heads with the live position state.
    """

    def __init__(
        self,
        windows: FeatureWindows,
        paths: Any,
        tail: Any,
        *,
        chunk: int = DEFAULT_CHUNK,
        max_request: int = 4096,
    ) -> None:
        self.tail = tail
        self.cache = PathCache(windows, paths.paths, chunk=chunk, max_request=max_request)

    def predict(
        self,
        symbols: Sequence[str],
        ts_ns: int,
        positions: np.ndarray,
        timestamps: Sequence[str | None],
    ) -> list[Signal]:
        """The signals of ``symbols``' bars at ``ts_ns`` (each must have a full window)."""
        rows = []
        for sym in symbols:
            row = self.cache.get(sym, ts_ns)
            if row is None:
                raise ValueError(f"{sym}: no feature window at {ts_ns}")
            rows.append(row)
        return list(
            self.tail.from_paths(
                np.stack(rows), positions, symbols=list(symbols), timestamps=timestamps
            )
        )
