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

from core.errors import ConfigError
from serving.payload import TooManyWindows
from serving.signal import Signal
from strategies.windows import FeatureWindows, LiveFeatureWindows, SymbolFeatures

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray], np.ndarray]
DEFAULT_CHUNK = 256
DEFAULT_MAX_REQUEST = 256  # windows per request: larger batches run slower per window here
INFERENCE_MODES = ("per-bar", "batched")
SAME_MODEL_TOLERANCE = 1e-4  # path summaries of the server's and the tail's model agree within


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
        max_request: int = DEFAULT_MAX_REQUEST,
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
        windows not scored yet (in one call, split at ``max_request``); forget the past. A
        failed call changes nothing: the next lookup asks again."""
        plan: list[tuple[str, int, tuple[int, int], np.ndarray]] = []
        parts: list[np.ndarray] = []
        for sym, feats in self.windows.symbols.items():
            first = int(np.searchsorted(feats.times, ts_ns, side="left"))
            lo, hi = self._span[sym]
            inside = lo <= first <= hi
            stop = min(first + self.chunk, len(feats.times))
            ends, wins = _windows(feats, self.windows.window, max(first, hi) if inside else first,
                                  stop)  # fmt: skip
            plan.append((sym, first, (first, max(stop, hi) if inside else stop), ends))
            parts.append(wins)
        batch = np.concatenate(parts)
        summaries = self._score_all(batch) if len(batch) else batch
        at = 0
        for sym, first, span, ends in plan:
            rows = {i: r for i, r in self._rows[sym].items() if i >= first}
            for i in ends:
                rows[int(i)] = summaries[at]
                at += 1
            self._rows[sym], self._span[sym] = rows, span

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


def check_same_model(tail: Any, mine: np.ndarray, got: np.ndarray, what: str, fix: str) -> None:
    """Refuse a server whose ``what`` for the same input (``got``) differ from the tail's
    (``mine``): it serves another model than the registry's."""
    if mine.shape[1:] != got.shape[1:] or not np.allclose(
        mine[0], got[0], rtol=SAME_MODEL_TOLERANCE, atol=SAME_MODEL_TOLERANCE
    ):
        raise ConfigError(
            f"the served model is not {getattr(tail, 'card', None) and tail.card.ref}: "
            f"its {what} differ from the registry's; {fix}"
        )


class TailSignals:
    """Signals per bar from path rows a cache holds (``cache.get(symbol, ts_ns)``) and the
    live position state, through the fusion and heads of ``tail`` (in-process)."""

    cache: Any
    tail: Any
    missing = "no feature window"

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
                raise ValueError(f"{sym}: {self.missing} at {ts_ns}")
            rows.append(row)
        return list(
            self.tail.from_paths(
                np.stack(rows), positions, symbols=list(symbols), timestamps=timestamps
            )
        )


class BatchedSignals(TailSignals):
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
        max_request: int = DEFAULT_MAX_REQUEST,
    ) -> None:
        self.tail = tail
        self.checked = paths is tail
        self._paths = paths
        self.cache = PathCache(windows, self._score, chunk=chunk, max_request=max_request)

    def _score(self, windows: np.ndarray) -> np.ndarray:
        got = np.asarray(self._paths.paths(windows))
        if not self.checked:  # the server's model must be the tail's: compare one window
            check_same_model(self.tail, np.asarray(self.tail.paths(windows[:1])), got,
                             "path summaries", "serve that version or use inference='per-bar'")  # fmt: skip
            self.checked = True
        return got


def batched_signals(
    client: Any,
    windows: FeatureWindows,
    *,
    chunk: int = DEFAULT_CHUNK,
    model: str | None = None,
    store: str | None = None,
) -> Any:
    """The strategy's batched scorer over ``client``: an ``InProcessClient`` is its own tail;
    a server client needs the model's fusion and heads in-process, from the registry
    (``model``, ``store``). A streaming preset's is a
    :class:`strategies.streamed.StreamSignals` (``chunk=1``: a request per bar, as live).
    Refused (``ConfigError``) for live windows, which cannot be scored ahead."""
    if isinstance(windows, LiveFeatureWindows):
        raise ConfigError(
            "inference='batched' scores bars ahead and needs the whole data before the run "
            "(a backtest); live feeds run with inference='per-bar'"
        )
    if not hasattr(client, "paths"):
        raise ConfigError(
            f"{type(client).__name__} cannot score path summaries; use inference='per-bar'"
        )
    tail = tail_client(client, model, store)
    if tail.card.streaming:  # a streaming preset: its streams, continued
        from strategies.streamed import StreamSignals

        return StreamSignals(windows, client, tail, chunk=chunk)
    return BatchedSignals(windows, client, tail, chunk=chunk)


def tail_client(client: Any, model: str | None, store: str | None) -> Any:
    """The in-process client that runs the fusion and the heads: ``client`` itself, or the
    registry's copy of the served model."""
    tail = client if hasattr(client, "from_paths") else None
    if tail is None and model is not None and store is not None:
        from pathlib import Path

        from serving.client import InProcessClient

        tail = InProcessClient.from_registry(Path(store) / "models", model, threads=1)
    if tail is None:
        raise ConfigError(
            "inference='batched' through a model server runs the fusion and heads in-process: "
            "pass model='name:version' and store='<store folder>' too, or batched="
            "BatchedSignals(windows, client, InProcessClient.from_registry(...))"
        )
    return tail
