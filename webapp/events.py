"""The WebSocket's topics: publish from any thread, deliver to each subscriber's bounded queue.

A subscriber that does not read keeps at most ``QUEUE_SIZE`` messages; one more and it is
dropped (its socket closed with 1008), never buffered without bound. Each topic keeps a
snapshot (its latest state) that a new subscriber receives first.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TOPICS = ("jobs", "training", "signals", "fills", "alerts", "health")
QUEUE_SIZE = 1000

Snapshot = Callable[[], Any]


@dataclass(eq=False)
class Subscriber:
    """One WebSocket's queue and topics; ``dropped`` once it fell too far behind."""

    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    topics: set[str] = field(default_factory=set)
    dropped: bool = False
    on_drop: Callable[[], None] | None = None


class Hub:
    """Topics -> subscribers. ``publish`` is thread-safe (jobs publish from reader threads)."""

    def __init__(self) -> None:
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshots: dict[str, Snapshot] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` (the server's event loop; set at start-up)."""
        self._loop = loop

    def add_snapshot(self, topic: str, fn: Snapshot) -> None:
        self._snapshots[topic] = fn

    def snapshot(self, topic: str) -> Any:
        fn = self._snapshots.get(topic)
        return fn() if fn is not None else None

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, topic: str, data: Any) -> None:
        """Send ``{"type": topic, "data": data}`` to every subscriber of ``topic``."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        msg = {"type": topic, "data": data}
        try:
            if _running_in(loop):
                self._deliver(topic, msg)
            else:
                loop.call_soon_threadsafe(self._deliver, topic, msg)
        except RuntimeError:  # the loop closed between the check and the call
            return

    def _deliver(self, topic: str, msg: dict[str, Any]) -> None:
        with self._lock:
            subs = [s for s in self._subs if topic in s.topics and not s.dropped]
        for sub in subs:
            try:
                sub.queue.put_nowait(msg)
            except asyncio.QueueFull:
                sub.dropped = True
                if sub.on_drop is not None:
                    sub.on_drop()


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
