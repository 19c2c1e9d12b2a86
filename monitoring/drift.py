"""Drift of a live session's inputs and outputs against training: the population stability index.

At training, :func:`reference` records for every feature (but the calendar's, which move by
construction) the decile edges of its (scaled)
training rows with the share of rows in each bin, and the same for the model's outputs on the
validation split (1-bar return and P(up)); the card keeps it as ``metrics["drift_reference"]``.
Live, :class:`DriftTracker` keeps the last ``window`` values of each and reports the largest
PSI, ``sum((live - ref) * ln(live / ref))`` over the bins. Rules of thumb: below 0.1 stable,
0.1-0.2 moderate, above 0.2 a shift worth a look.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EPS = 1e-4
BINS = 10
CALENDAR = ("dow_", "month_", "dom_")  # features of the date: they shift by construction


def _bins(values: np.ndarray) -> dict[str, list[float]]:
    v = values[np.isfinite(values)]
    edges = np.unique(np.quantile(v, np.linspace(0, 1, BINS + 1)[1:-1])) if len(v) else np.array([])
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "p": (counts / max(len(v), 1)).tolist()}


def reference(
    rows: np.ndarray, names: Sequence[str], outputs: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """The card's drift reference from training rows ``(R, F)`` and validation ``outputs``."""
    return {
        "features": {
            n: _bins(rows[:, j].astype(np.float64))
            for j, n in enumerate(names)
            if not n.startswith(CALENDAR)
        },
        "outputs": {k: _bins(np.asarray(v, dtype=np.float64)) for k, v in outputs.items()},
    }


def psi(ref: Mapping[str, Sequence[float]], values: np.ndarray) -> float:
    """The PSI of ``values`` against a reference's bins."""
    v = values[np.isfinite(values)]
    if not len(v):
        return 0.0
    edges = np.asarray(ref["edges"], dtype=np.float64)
    expected = np.maximum(np.asarray(ref["p"], dtype=np.float64), EPS)
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    live = np.maximum(counts / len(v), EPS)
    return float(np.sum((live - expected) * np.log(live / expected)))


class DriftTracker:
    """The last ``window`` live values of every feature and output; :meth:`value` is the
    largest PSI once ``min_values`` are in (None before, or without a reference)."""

    def __init__(
        self, ref: Mapping[str, Any] | None, *, window: int = 500, min_values: int = 100
    ) -> None:
        self.ref = ref or {}
        self.min_values = min_values
        self._live: dict[tuple[str, str], deque[float]] = {}
        self.window = window

    def add(self, kind: str, name: str, value: float) -> None:
        if name not in self.ref.get(kind, {}):
            return
        q = self._live.setdefault((kind, name), deque(maxlen=self.window))
        q.append(float(value))

    def add_row(self, names: Sequence[str], row: np.ndarray) -> None:
        for n, v in zip(names, row, strict=True):
            self.add("features", n, float(v))

    def worst(self) -> tuple[str, float] | None:
        """The (kind/name, PSI) of the largest drift, or None."""
        best: tuple[str, float] | None = None
        for (kind, name), q in self._live.items():
            if len(q) < self.min_values:
                continue
            value = psi(self.ref[kind][name], np.fromiter(q, dtype=np.float64))
            if best is None or value > best[1]:
                best = (f"{kind}/{name}", value)
        return best

    def value(self) -> float | None:
        w = self.worst()
        return None if w is None else w[1]
