"""Stateful serving of streaming presets: each stream's recurrent state kept in the worker.

A streaming preset (``tiny-stream``, ``hybrid-stream``) carries its state from bar to bar; a
client (a backtest, a live session) continues a *stream*, keyed by its session id and symbol,
with the bars that follow the last one the server has seen. TorchServe 0.12's own sequence
batching is not used: a dead worker is never restarted there and a request for its sequence
hangs (see ``docs/serving.md``); the handler keeps the states itself, in
:class:`StreamSessions`, with these rules:

- a request for a new stream (``prev`` null) starts it from the initial state, replacing any
  state under the same key;
- a continuation names the last bar it follows (``prev``): it must be the bar the state ends
  at, else the request is refused (:class:`StreamGap`, HTTP 409) and the state is unchanged:
  a bar skipped or sent twice would make every later prediction wrong;
- a continuation whose state is not there (the worker restarted, or the stream expired) is
  refused with :class:`StateLost` (HTTP 409): the client rebuilds the state by sending the
  stream again from the bars it holds, and says so in its log; a state is never silently
  reset;
- a stream not continued for ``idle_seconds`` expires; ``max_streams`` bounds the memory (the
  stream continued least recently goes first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mlmodels.nets.streaming import State, concat_states, select_state
from serving.payload import BadRequest

DEFAULT_IDLE_SECONDS = 3600.0
DEFAULT_MAX_STREAMS = 10_000


class StreamConflict(BadRequest):
    """A continuation the server cannot apply (HTTP 409); ``reason`` is ``gap`` or ``lost``."""

    reason = "conflict"


class StreamGap(StreamConflict):
    """The request's ``prev`` is not the bar the stream's state ends at."""

    reason = "gap"


class StateLost(StreamConflict):
    """No state for a continued stream (worker restarted, stream expired): send it again."""

    reason = "lost"


@dataclass
class _Stream:
    state: State
    last: str  # the time of the last bar the state has seen (ISO 8601, as the client sent it)
    used: float  # monotonic time of the last request


@dataclass(frozen=True)
class StreamRequest:
    """One stream's part of a request: ``rows`` ``(T, F)`` scaled features of the bars after
    ``prev`` (None: a new stream) up to ``last``."""

    symbol: str
    prev: str | None
    last: str
    rows: torch.Tensor


class StreamSessions:
    """The states of every stream of one model in this worker (module docstring)."""

    def __init__(
        self,
        init_state: Callable[[int], State],
        *,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        max_streams: int = DEFAULT_MAX_STREAMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.init_state = init_state
        self.idle_seconds = idle_seconds
        self.max_streams = max_streams
        self.clock = clock
        self._streams: OrderedDict[tuple[str, str], _Stream] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def check(self, session: str, requests: Sequence[StreamRequest]) -> list[State]:
        """The state each request continues (a fresh one for a new stream); raises
        ``StreamGap`` / ``StateLost`` for the first that cannot continue, changing nothing."""
        with self._lock:
            self._expire()
            states = []
            for req in requests:
                if req.prev is None:
                    states.append(self.init_state(1))
                    continue
                mine = self._streams.get((session, req.symbol))
                if mine is None:
                    raise StateLost(
                        f"stream {req.symbol} of session {session}: no state here (the worker "
                        "restarted or the stream expired); send the stream again from its start"
                    )
                if mine.last != req.prev:
                    raise StreamGap(
                        f"stream {req.symbol} of session {session}: the state ends at bar "
                        f"{mine.last}, the request continues from {req.prev}; send the bars "
                        f"after {mine.last}"
                    )
                states.append(mine.state)
            return states

    def store(self, session: str, requests: Sequence[StreamRequest], states: State) -> None:
        """Keep the states after the requests (``states``: one per request, batched)."""
        with self._lock:
            now = self.clock()
            for i, req in enumerate(requests):
                key = (session, req.symbol)
                self._streams.pop(key, None)
                mine = {k: v.clone() for k, v in select_state(states, i).items()}  # not a view
                self._streams[key] = _Stream(mine, req.last, now)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)

    def close(self, session: str) -> int:
        """Forget every stream of ``session``; returns how many there were."""
        with self._lock:
            keys = [k for k in self._streams if k[0] == session]
            for k in keys:
                del self._streams[k]
            return len(keys)

    def _expire(self) -> None:
        now = self.clock()
        while self._streams:
            key, oldest = next(iter(self._streams.items()))
            if now - oldest.used <= self.idle_seconds:
                break
            del self._streams[key]


def advance(
    net: torch.nn.Module,
    sessions: StreamSessions,
    session: str,
    requests: Sequence[StreamRequest],
) -> torch.Tensor:
    """Continue every stream of ``requests`` (all ``T`` bars long): the paths' outputs
    ``(N, T, D)``; the states are kept only when every stream could continue."""
    states = sessions.check(session, requests)
    x = torch.stack([r.rows for r in requests])
    with torch.inference_mode():
        seq, after = net.paths_sequence(x, concat_states(states))  # type: ignore[operator]
    sessions.store(session, requests, after)
    return seq  # type: ignore[no-any-return]
