"""A challenger scored in shadow beside the champion on a live session's bars.

``MLSignalStrategy(shadow=ShadowScorer(...))`` hands the scorer every live bar's feature
windows, the positions it sent with them, the bar's closes and the champion's signals. The
scorer asks the challenger for the same windows on a background thread and appends one row per
symbol and bar to ``shadow.jsonl`` in the session's run folder; its signals are recorded,
never traded. The strategy never waits for it: a full queue drops the bar (counted in
``dropped``), a challenger that fails is counted in ``failed`` and its row records the error.

Each row: ``t`` (the bar's time, ISO), ``symbol``, ``close``, ``champion`` and
``challenger`` (each ``{"ref", "return_1", "p_up", "direction", "confidence"}`` or None when
that model gave no signal) and ``error``. :mod:`workflows.promotion` reads the rows back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.client import SignalClient
from serving.signal import Signal

log = logging.getLogger(__name__)

SHADOW_FILE = "shadow.jsonl"


def signal_row(sig: Signal | None) -> dict[str, Any] | None:
    """The figures the shadow test reads from one signal (None: no signal)."""
    if sig is None:
        return None
    down, flat, up = sig.direction
    return {
        "ref": f"{sig.model}:{sig.version}",
        "return_1": float(sig.returns[0]) if sig.returns else 0.0,
        "p_up": float(up),
        "direction": -1 if down > max(flat, up) else (1 if up > max(down, flat) else 0),
        "confidence": float(sig.confidence),
    }


class ShadowScorer:
    """Asks ``client`` (the challenger) on a background thread; rows go to ``path``."""

    def __init__(self, client: SignalClient, path: Path, *, queue_size: int = 256) -> None:
        self.client = client
        self.path = Path(path)
        self.scored = self.dropped = self.failed = 0
        self.seconds = 0.0  # the challenger's time, summed over the bars scored
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=queue_size)
        self._file = self.path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._work, name="shadow-scorer", daemon=True)
        self._thread.start()

    def submit(
        self,
        windows: Sequence[np.ndarray],
        states: np.ndarray,
        names: Sequence[str],
        closes: Sequence[float],
        champion: Sequence[Signal | None],
        stamp: str,
    ) -> None:
        """One bar: queued for the challenger without waiting (a full queue drops it)."""
        item = (np.stack(windows), np.array(states, dtype=np.float32), list(names),
                [float(c) for c in closes], [signal_row(s) for s in champion], stamp)  # fmt: skip
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            windows, states, names, closes, champion, stamp = item
            began = time.perf_counter()
            error: str | None = None
            rows: list[dict[str, Any] | None] = [None] * len(names)
            try:
                sigs = self.client.predict(windows, states, symbols=names,
                                           timestamps=[stamp] * len(names))  # fmt: skip
                rows = [signal_row(s) for s in sigs]
            except Exception as err:  # a challenger's fault never reaches the trading thread
                self.failed += 1
                error = f"{type(err).__name__}: {err}"[:300]
                if self.failed in (1, 10, 100) or self.failed % 1000 == 0:
                    log.warning("shadow challenger failed (%d so far): %s", self.failed, error)
            self.seconds += time.perf_counter() - began
            self.scored += 1
            for name, close, champ, chal in zip(names, closes, champion, rows, strict=True):
                row = {"t": stamp, "symbol": name, "close": close, "champion": champ,
                       "challenger": chal, "error": error}  # fmt: skip
                self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self, timeout: float = 30.0) -> dict[str, Any]:
        """Score what is queued (up to ``timeout``), stop the thread; the counts."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else the daemon thread still writes: left open
            self._file.close()
        return {"shadow_bars": self.scored, "shadow_dropped": self.dropped,
                "shadow_failed": self.failed,
                "shadow_ms_per_bar": 1000 * self.seconds / self.scored if self.scored else None}  # fmt: skip
