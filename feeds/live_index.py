"""The synthetic index, live: built bar by bar from its constituents' live bars.

A stored index (``btml index build``) keeps how it was built in its ``config`` attribute (the
method, the members or the point-in-time membership, weights, shares, rebalancing).
:class:`LiveIndex` continues it in a live session: it starts from the constituents' stored
bars, backfills from the hub the bars since the store ends, subscribes to each constituent's
live bars, and when a time's bars are in it appends that index bar: the chain of
:func:`feeds.index.build_index` continued from the newest bar (its close and weights), so the
live levels continue the stored series exactly (the chain is causal: a new bar never changes an
earlier one) at the cost of one bar, whatever the history's length. Replayed
stored bars give the stored index bar for bar (``tests/test_live_index.py``).

The rule for a late or missing constituent: the bar of time ``t`` closes when every member at
``t`` has its bar there; else when each missing member has sent a bar after ``t`` (a symbol's
bars come in time order, so its bar of ``t`` will not), or ``deadline_s`` wall seconds after
the first bar of ``t`` arrived, or when a
reader asks for ``t`` and waited ``deadline_s`` (:meth:`LiveIndex.until`). A member missing
then is carried at its last close (a flat bar of volume 0, as the batch build carries a missing
bar) and the bar is flagged (:attr:`LiveIndex.flags`: time -> the carried symbols). Its bar of
``t`` arriving later is dropped with a warning: the index never rewrites a bar it gave out.

The hub is any object with ``subscribe(symbol, timeframe, sink)`` and ``history(symbol,
timeframe, start, end)`` (:mod:`feeds.live`), such as
:class:`brokers.alpaca.datastream.AlpacaBarHub`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError, SymbolNotFound
from feeds.frame import OHLCV_COLUMNS
from feeds.index import IndexConfig, _members, build_index
from feeds.store import ParquetStore
from feeds.timeframes import get_timeframe

log = logging.getLogger(__name__)


def stored_config(index: pd.DataFrame, name: str) -> IndexConfig:
    """How the stored ``index`` was built (its ``config`` attribute), for extending it live."""
    raw = index.attrs.get("config")
    if not raw:
        raise DataError(
            f"index {name} was stored without its build settings (built before live indices); "
            f"rebuild it with `btml index build {name} ...` to trade a model that reads it"
        )
    data = json.loads(str(raw))
    return IndexConfig.from_dict({**data, "start": data.get("start"), "end": None})


class LiveIndex:
    """One synthetic index continued live from its constituents' bars (module docstring).

    ``frames``: each constituent's bars so far (the stored ones, backfilled by :meth:`start`);
    ``clock``: seconds (wall time by default) for the deadline.
    """

    def __init__(
        self,
        cfg: IndexConfig,
        frames: Mapping[str, pd.DataFrame],
        timeframe: str,
        hub: Any,
        *,
        deadline_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg, self.timeframe, self.hub = cfg, timeframe, hub
        self.delta = get_timeframe(timeframe).delta
        self.deadline_s, self.clock = deadline_s, clock
        self.symbols = cfg.symbols()
        self.rows: dict[str, pd.DataFrame] = {
            s: frames[s][list(OHLCV_COLUMNS)] for s in self.symbols
        }
        self.sinks: dict[str, queue.Queue[pd.DataFrame]] = {s: queue.Queue() for s in self.symbols}
        self.pending: dict[pd.Timestamp, dict[str, np.ndarray]] = {}
        self.first_seen: dict[pd.Timestamp, float] = {}
        self.flags: dict[pd.Timestamp, tuple[str, ...]] = {}
        self.newest: dict[str, pd.Timestamp] = {}  # the newest live bar taken per symbol
        self.dropped = 0
        self._lock = threading.RLock()
        self.state: np.ndarray | None = None  # the chain's weights after the newest bar
        self.frame = self._build()

    @classmethod
    def from_store(
        cls, store: ParquetStore, name: str, timeframe: str, hub: Any, **kwargs: Any
    ) -> LiveIndex:
        """The stored index ``name`` at ``timeframe``, from its stored constituents; refused
        when they no longer give the stored index (changed since it was built)."""
        stored = store.read(name, timeframe)
        cfg = stored_config(stored, name)
        frames = {}
        for s in cfg.symbols():
            try:
                frames[s] = store.read(s, timeframe)
            except SymbolNotFound as err:
                raise DataError(
                    f"index {name}: constituent {s} is not in the store ({timeframe}); the live "
                    "index starts from the constituents' stored bars"
                ) from err
        live = cls(cfg, frames, timeframe, hub, **kwargs)
        mine = live.frame.reindex(stored.index)["close"].to_numpy()
        if not np.allclose(mine, stored["close"].to_numpy(), rtol=1e-12, atol=0, equal_nan=True):
            raise DataError(
                f"index {name}: its stored constituents no longer give the stored index (they "
                f"changed since it was built); rebuild it with `btml index build {name}`"
            )
        return live

    # -- the live feed ------------------------------------------------------------------------

    def start(self, now: pd.Timestamp | None = None) -> None:
        """Backfill every constituent from the hub since its stored end, then subscribe."""
        now = now or pd.Timestamp.now(tz="UTC")
        for s in self.symbols:
            have = self.rows[s]
            begin = have.index[-1] + self.delta if len(have) else now - 1000 * self.delta
            if begin < now:
                more = self.hub.history(s, self.timeframe, begin, now)
                self.rows[s] = _append(have, more[list(OHLCV_COLUMNS)] if len(more) else more)
        with self._lock:
            self.frame = self._build()
        for s in self.symbols:
            self.hub.subscribe(s, self.timeframe, self.sinks[s])

    def stop(self) -> None:
        """Unsubscribe where the hub can."""
        drop = getattr(self.hub, "unsubscribe", None)
        if drop is not None:
            for s in self.symbols:
                drop(s, self.timeframe, self.sinks[s])

    def until(self, t: pd.Timestamp) -> pd.DataFrame:
        """The index through bar ``t`` (its start time): waits up to ``deadline_s`` for the
        constituents' bars of ``t``, then closes it with the missing ones carried."""
        t = pd.Timestamp(t)
        waited = self.clock() + self.deadline_s
        while True:
            with self._lock:
                self.poll()
                if self.frame.index[-1] >= t:
                    return self.frame
                if self.clock() >= waited:
                    self._close_through(t)
                    return self.frame
            time.sleep(0.01)

    def poll(self) -> list[pd.Timestamp]:
        """Take the constituents' new bars and close the bars that are due; returns them."""
        with self._lock:
            for s, sink in self.sinks.items():
                while True:
                    try:
                        part = sink.get_nowait()
                    except queue.Empty:
                        break
                    self._take(s, part)
            return self._close_due()

    # -- inside -------------------------------------------------------------------------------

    def _take(self, symbol: str, part: pd.DataFrame) -> None:
        end = self.frame.index[-1]
        for ts, row in zip(part.index, part[list(OHLCV_COLUMNS)].to_numpy(np.float64), strict=True):
            ts = pd.Timestamp(ts)
            if ts <= end:  # a bar it has (backfill overlap), or one it carried: never rewritten
                if symbol in self.flags.get(ts, ()):
                    self.dropped += 1
                    log.warning("index %s: %s's bar of %s came after the index bar closed "
                                "with it carried; dropped", self.cfg.name, symbol, ts)  # fmt: skip
                continue
            self.pending.setdefault(ts, {})[symbol] = row
            self.first_seen.setdefault(ts, self.clock())
            self.newest[symbol] = max(ts, self.newest.get(symbol, ts))

    def _members_at(self, t: pd.Timestamp) -> list[str]:
        """The members at ``t`` (every constituent with bars, for a plain constituent list)."""
        have = np.array([[len(self.rows[s]) > 0 for s in self.symbols]])
        mask = _members(self.cfg, self.symbols, pd.DatetimeIndex([t]), have)[0]
        return [s for s, m in zip(self.symbols, mask, strict=True) if m]

    def _close_due(self) -> list[pd.Timestamp]:
        closed = []
        for t in sorted(self.pending):
            missing = set(self._members_at(t)) - set(self.pending[t])
            # each symbol's bars come in time order: one that sent a later bar skipped this one
            moved_on = all(self.newest.get(s, t) > t for s in missing)
            late = self.clock() - self.first_seen[t] >= self.deadline_s
            if moved_on or late:  # (nothing missing: moved_on holds)
                self._close(t)
                closed.append(t)
            else:
                break  # bars close in time order
        return closed

    def _close_through(self, t: pd.Timestamp) -> None:
        for u in sorted(x for x in self.pending if x <= t):
            self._close(u)
        if self.frame.index[-1] < t:  # nothing of t arrived at all: every member carried
            self.pending[t], self.first_seen[t] = {}, self.clock()
            self._close(t)

    def _close(self, t: pd.Timestamp) -> None:
        got = self.pending.pop(t, {})
        self.first_seen.pop(t, None)
        carried = []
        for s in self._members_at(t):
            if s in got:
                continue
            last = self.rows[s]["close"].dropna()
            if last.empty:
                continue
            px = float(last.iloc[-1])
            got[s] = np.array([px, px, px, px, 0.0])
            carried.append(s)
        for s, row in got.items():
            add = pd.DataFrame([row], index=pd.DatetimeIndex([t], name="datetime"),
                               columns=list(OHLCV_COLUMNS))  # fmt: skip
            self.rows[s] = _append(self.rows[s], add)
        if carried:
            self.flags[t] = tuple(carried)
            log.warning("index %s: bar %s closed with %s carried at the last close",
                        self.cfg.name, t, ", ".join(carried))  # fmt: skip
        self.frame = self._extend(t, set(got))

    def _build(self) -> pd.DataFrame:
        """The whole chain over every bar held (at the start)."""
        frames = {}
        for s, rows in self.rows.items():
            f = rows.copy()
            f.attrs = {"symbol": s, "timeframe": self.timeframe}
            frames[s] = f
        result = build_index(frames, self.cfg, self.timeframe)
        self.state = result.final_weights
        return result.frame

    def _extend(self, t: pd.Timestamp, present: set[str]) -> pd.DataFrame:
        """The frame with bar ``t``: the chain continued from the newest bar (its close and
        weights), over that bar and ``t`` only, as a build over all gives it. A symbol of
        ``t`` without a row at the newest bar starts from its last close there (as the whole
        build carries it); one without any earlier bar starts at ``t``."""
        prev = self.frame.index[-1]
        frames = {}
        for s, rows in self.rows.items():
            f = rows.loc[rows.index >= prev]
            if s in present and prev not in f.index:
                before = rows.loc[rows.index < prev, "close"].dropna()
                if len(before):
                    px = float(before.iloc[-1])
                    lead = pd.DataFrame([[px, px, px, px, 0.0]], columns=list(OHLCV_COLUMNS),
                                        index=pd.DatetimeIndex([prev], name=f.index.name))  # fmt: skip
                    f = pd.concat([lead, f])
            f = f.copy()
            f.attrs = {"symbol": s, "timeframe": self.timeframe}
            frames[s] = f
        level = float(self.frame["close"].iloc[-1])
        cfg = replace(self.cfg, base_level=level, start=None, end=None)
        result = build_index(frames, cfg, self.timeframe, start_weights=self.state)
        self.state = result.final_weights
        new = result.frame.iloc[[-1]]
        return pd.concat([self.frame, new]) if new.index[0] > prev else self.frame


def _append(have: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """``have`` with the rows of ``more`` after its end."""
    if not len(more):
        return have
    if len(have):
        more = more[more.index > have.index[-1]]
    return pd.concat([have, more]) if len(have) else more.copy()
