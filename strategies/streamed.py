"""Streaming presets in a backtest: each symbol's stream continued on the server, chunk by chunk.

A streaming preset (``tiny-stream``, ``hybrid-stream``) carries its recurrent state from bar to
bar. A backtest opens one session on the model server (:mod:`serving.streams`) and streams
every symbol's feature rows in order: the next ``chunk`` bars of every symbol in one request
(``chunk=1``: one bar per request, as a live feed would), the state kept on the server between
requests. The answer is every bar's path outputs; the fusion and the heads then take the live
position state in-process (the tail, as in :mod:`strategies.batched`).

A symbol's stream starts at its first complete feature row, as in training
(:mod:`mlmodels.stream`), and restarts after a row the features cannot fill (a NaN); a bar has a
signal once ``window`` rows of its stream are behind it, the bars a windowed preset would
need. Stepping bar by bar and streaming in chunks give the same signals (a test checks it).

When the server has lost a stream (worker restarted, session expired) or refuses a
continuation as a gap, the stream is rebuilt from its start and the log says so; it is never
silently reset.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.errors import ConfigError
from serving.signal import Signal
from serving.streams import StreamConflict
from strategies.batched import TailSignals, check_same_model
from strategies.windows import FeatureWindows, LiveFeatureWindows, SymbolFeatures

log = logging.getLogger(__name__)

DEFAULT_STREAM_ROWS = 8192  # bars per request, all streams together


class _Stream:
    """One symbol's progress: the next row to send and the bar the server's state ends at."""

    def __init__(self, feats: SymbolFeatures) -> None:
        self.feats = feats
        self.next = 0
        self.prev: str | None = None  # ISO time of row next - 1 when the server holds a state
        self.start = 0  # the row the current stream started at
        self.rows: dict[int, np.ndarray] = {}

    def iso(self, i: int) -> str:
        return pd.Timestamp(int(self.feats.times[i]), tz="UTC").isoformat()

    def good(self, i: int) -> bool:
        return bool(self.feats.bad[i + 1] == self.feats.bad[i])


class StreamCache:
    """Path outputs by (symbol, bar) of streams continued on ``client`` (module docstring).

    ``client``: anything with ``stream_paths(session, symbols, prev, last, rows)`` (a
    ``RestClient`` to a served model or an ``InProcessClient``). ``requests``, ``rows_sent``
    and ``rebuilds`` count for the log and the benchmarks.
    """

    def __init__(
        self,
        windows: FeatureWindows,
        client: Any,
        *,
        chunk: int = 256,
        max_rows: int = DEFAULT_STREAM_ROWS,
        session: str | None = None,
    ) -> None:
        if chunk < 1 or max_rows < 1:
            raise ValueError(f"chunk and max_rows must be >= 1, got {chunk}, {max_rows}")
        self.windows = windows
        self.client = client
        self.chunk = chunk
        self.max_rows = max_rows
        self.session = session or f"backtest-{uuid.uuid4().hex[:12]}"
        self.streams = {s: _Stream(f) for s, f in windows.symbols.items()}
        self.requests = 0
        self.rows_sent = 0
        self.rebuilds = 0

    def get(self, symbol: str, ts_ns: int) -> np.ndarray | None:
        """The path outputs at ``symbol``'s bar ``ts_ns`` (None: no full window there)."""
        st = self.streams.get(symbol)
        if st is None or st.feats.window_at(ts_ns, self.windows.window) is None:
            return None
        i = int(np.searchsorted(st.feats.times, ts_ns, side="left"))
        if i not in st.rows:
            self._fill(ts_ns)
        return st.rows.get(i)

    def _fill(self, ts_ns: int) -> None:
        """Stream every symbol up to ``chunk`` bars past ``ts_ns``; forget rows before it."""
        plan: list[tuple[str, int, int]] = []  # symbol, first row to send, stop
        for sym, st in self.streams.items():
            first = int(np.searchsorted(st.feats.times, ts_ns, side="left"))
            st.rows = {i: r for i, r in st.rows.items() if i >= first}
            stop = min(first + self.chunk, len(st.feats.times))
            if st.next < stop:
                plan.append((sym, st.next, stop))
        try:
            self._send(plan)
        except StreamConflict as err:
            self._rebuild(plan, err)

    def _rebuild(self, plan: list[tuple[str, int, int]], err: StreamConflict) -> None:
        """Send the planned streams again from their starts (once; the log says so)."""
        self.rebuilds += 1
        for sym, _, _ in plan:
            st = self.streams[sym]
            log.warning(
                "stream %s of session %s could not continue on the server (%s: %s); rebuilt "
                "from its start, %d bars back", sym, self.session, err.reason, err,
                st.next - st.start,
            )  # fmt: skip
            st.next, st.prev = st.start, None
        self._send([(sym, self.streams[sym].start, stop) for sym, _, stop in plan])

    def _send(self, plan: list[tuple[str, int, int]]) -> None:
        """Stream each planned symbol's rows, in runs of good rows, as few requests as
        runs of equal length allow."""
        pending = {sym: (first, stop) for sym, first, stop in plan}
        while pending:
            runs: dict[str, tuple[int, int]] = {}
            for sym, (first, stop) in list(pending.items()):
                st = self.streams[sym]
                while first < stop and not st.good(first):  # a NaN row: the stream restarts
                    first, st.prev, st.start = first + 1, None, first + 1
                end = first
                while end < stop and st.good(end):
                    end += 1
                if end > first:
                    runs[sym] = (first, end)
                if end >= stop:
                    del pending[sym]
                else:
                    pending[sym] = (end, stop)
                st.next = max(st.next, first)
            by_length: dict[int, list[str]] = {}
            for sym, (a, b) in runs.items():
                by_length.setdefault(b - a, []).append(sym)
            for length, syms in by_length.items():
                for at in range(0, length, max(1, self.max_rows // len(syms))):
                    step = min(max(1, self.max_rows // len(syms)), length - at)
                    self._request([(s, runs[s][0] + at, runs[s][0] + at + step) for s in syms])

    def _request(self, parts: list[tuple[str, int, int]]) -> None:
        """One request: every part's rows continue its stream; the answer is cached."""
        streams = [self.streams[s] for s, _, _ in parts]
        rows = np.stack(
            [st.feats.values[a:b] for st, (_, a, b) in zip(streams, parts, strict=True)]
        )
        out = self.client.stream_paths(
            self.session, [s for s, _, _ in parts], [st.prev for st in streams],
            [st.iso(b - 1) for st, (_, _, b) in zip(streams, parts, strict=True)], rows,
        )  # fmt: skip
        out = np.asarray(out)
        if out.shape[:2] != rows.shape[:2]:
            raise ValueError(f"the stream answer has shape {out.shape} for {rows.shape[:2]} bars")
        self.requests += 1
        self.rows_sent += rows.shape[0] * rows.shape[1]
        for k, (st, (_, a, b)) in enumerate(zip(streams, parts, strict=True)):
            for j, i in enumerate(range(a, b)):
                st.rows[i] = out[k, j]
            st.next, st.prev = b, st.iso(b - 1)


class StreamSignals(TailSignals):
    """Signals per bar from streamed path outputs and the live position state (the module
    docstring); the same ``predict`` as :class:`strategies.batched.BatchedSignals`.

    ``client``: the stream client (server or in-process); ``tail``: an ``InProcessClient`` of
    the same model version for the fusion and the heads.
    """

    missing = "no streamed bar"

    def __init__(
        self, windows: FeatureWindows, client: Any, tail: Any, *, chunk: int = 256
    ) -> None:
        self.tail = tail
        self.checked = client is tail
        self._client = client
        self.cache = StreamCache(windows, self, chunk=chunk)

    def stream_paths(
        self,
        session: str,
        symbols: Sequence[str],
        prev: Sequence[str | None],
        last: Sequence[str],
        rows: np.ndarray,
    ) -> np.ndarray:
        """The client's answer; the first compared with the tail's (same model version)."""
        got = np.asarray(self._client.stream_paths(session, symbols, prev, last, rows))
        if not self.checked and prev[0] is None:
            mine = np.asarray(self.tail.stream_paths(session + "/check", symbols[:1], [None],
                                                     last[:1], rows[:1]))  # fmt: skip
            check_same_model(self.tail, mine, got, "stream outputs", "serve that version")
            self.checked = True
        return got


class LiveStreamSignals:
    """A live session's streams: each new bar's feature row continues its symbol's stream.

    The rows come from the live windows' last computation (``LiveFeatureWindows.recent``).
    A symbol's first bar, and any bar after its state was lost on the server (or after a bar
    the session did not stream), starts the stream again from the last ``history`` bars the
    feed holds (their trailing run of complete rows): "rebuilt from the last N bars", in the
    log, never a silent reset.
    """

    def __init__(
        self, windows: LiveFeatureWindows, client: Any, tail: Any, *, session: str | None = None
    ) -> None:
        self.windows = windows
        self.client = client
        self.tail = tail
        self.session = session or f"live-{uuid.uuid4().hex[:12]}"
        self.prev: dict[str, str] = {}
        self.started: set[str] = set()
        self.requests = 0
        self.rebuilds = 0

    def predict(
        self,
        symbols: Sequence[str],
        ts_ns: int,
        positions: np.ndarray,
        timestamps: Sequence[str | None],
    ) -> list[Signal]:
        """The signals of ``symbols``' newest bars (their windows were just computed)."""
        out: dict[str, np.ndarray] = {}
        recent = {s: self.windows.recent[s] for s in symbols}
        follow = [s for s in symbols if self._continues(s, recent[s][0])]
        if follow:
            try:
                self._send(follow, {s: recent[s][1][-1:] for s in follow}, recent, out)
            except StreamConflict as err:
                for s in follow:
                    log.warning("stream %s of session %s could not continue on the server "
                                "(%s: %s)", s, self.session, err.reason, err)  # fmt: skip
                    self.prev.pop(s, None)
                self.rebuilds += 1
        for s in symbols:
            if s not in out:
                self._restart(s, recent[s], out)
        rows = np.stack([out[s] for s in symbols])
        return list(self.tail.from_paths(rows, positions, symbols=list(symbols),
                                         timestamps=timestamps))  # fmt: skip

    def _continues(self, sym: str, times: np.ndarray) -> bool:
        prev = self.prev.get(sym)
        return prev is not None and len(times) >= 2 and prev == _iso(times[-2])

    def _restart(
        self, sym: str, rec: tuple[np.ndarray, np.ndarray], out: dict[str, np.ndarray]
    ) -> None:
        times, values = rec
        ok = np.isfinite(values).all(axis=1)
        start = len(ok) - int(np.argmin(ok[::-1])) if not ok.all() else 0
        again = sym in self.started
        (log.warning if again else log.info)(
            "stream %s of session %s %s from the last %d bars", sym, self.session,
            "rebuilt" if again else "started", len(ok) - start,
        )  # fmt: skip
        self.started.add(sym)
        self.prev.pop(sym, None)
        self._send([sym], {sym: values[start:]}, {sym: rec}, out, new=True)

    def _send(
        self,
        syms: list[str],
        rows: dict[str, np.ndarray],
        recent: dict[str, tuple[np.ndarray, np.ndarray]],
        out: dict[str, np.ndarray],
        *,
        new: bool = False,
    ) -> None:
        last = [_iso(recent[s][0][-1]) for s in syms]
        prev = [None if new else self.prev[s] for s in syms]
        got = np.asarray(self.client.stream_paths(
            self.session, syms, prev, last, np.stack([rows[s] for s in syms])))  # fmt: skip
        self.requests += 1
        for k, s in enumerate(syms):
            out[s] = got[k, -1]
            self.prev[s] = last[k]


def _iso(ns: Any) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def per_bar_streams(
    client: Any, windows: FeatureWindows, model: str | None, store: str | None
) -> StreamSignals | LiveStreamSignals | None:
    """The per-bar scorer of a streaming preset: in a backtest its streams continued one bar
    per request, live :class:`LiveStreamSignals` (None for a windowed preset or a client
    without streams)."""
    from strategies.batched import tail_client

    if not hasattr(client, "stream_paths"):
        return None
    try:
        tail = tail_client(client, model, store)
    except ConfigError:
        return None
    if not tail.card.streaming:
        return None
    if isinstance(windows, LiveFeatureWindows):
        return LiveStreamSignals(windows, client, tail)
    return StreamSignals(windows, client, tail, chunk=1)
