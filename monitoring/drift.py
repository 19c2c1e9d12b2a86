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


def bins(values: np.ndarray) -> dict[str, list[float]]:
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
            n: bins(rows[:, j].astype(np.float64))
            for j, n in enumerate(names)
            if not n.startswith(CALENDAR)
        },
        "outputs": {k: bins(np.asarray(v, dtype=np.float64)) for k, v in outputs.items()},
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
    """The last ``window`` live values of every feature (a ring buffer, one row per bar) and
    output; :meth:`value` is the largest PSI once ``min_values`` are in (None before, or
    without a reference)."""

    def __init__(
        self, ref: Mapping[str, Any] | None, *, window: int = 500, min_values: int = 100
    ) -> None:
        self.ref = ref or {}
        self.window, self.min_values = window, min_values
        self._names: tuple[str, ...] = tuple(self.ref.get("features", {}))
        self._rows = np.full((window, len(self._names)), np.nan)
        self._n = 0
        self._cols: tuple[Sequence[str], np.ndarray] | None = None
        self._live: dict[str, deque[float]] = {}

    def add(self, kind: str, name: str, value: float) -> None:
        """One live value of an output (``kind="outputs"``) or a feature."""
        if kind == "features":
            if name in self._names:
                row = np.full(len(self._names), np.nan)
                row[self._names.index(name)] = value
                self._put(row)
            return
        if name in self.ref.get("outputs", {}):
            self._live.setdefault(name, deque(maxlen=self.window)).append(float(value))

    def add_row(self, names: Sequence[str], row: np.ndarray) -> None:
        """One bar's feature row, in ``names``' order."""
        self.add_rows(names, np.asarray(row, dtype=np.float64)[None])

    def add_rows(self, names: Sequence[str], rows: np.ndarray) -> None:
        """Feature rows ``(N, F)`` in ``names``' order (one per symbol of a bar)."""
        if not self._names or not len(rows):
            return
        if self._cols is None or self._cols[0] is not names:
            where = {n: i for i, n in enumerate(names)}
            self._cols = (names, np.array([where.get(n, -1) for n in self._names]))  # type: ignore[assignment]
        cols = self._cols[1]
        picked = np.asarray(rows, dtype=np.float64)[:, np.maximum(cols, 0)]
        picked[:, cols < 0] = np.nan
        for values in picked[-self.window :]:
            self._put(values)

    def _put(self, values: np.ndarray) -> None:
        self._rows[self._n % self.window] = values
        self._n += 1

    def worst(self) -> tuple[str, float] | None:
        """The (kind/name, PSI) of the largest drift, or None."""
        best: tuple[str, float] | None = None
        rows = self._rows[: min(self._n, self.window)]
        for j, name in enumerate(self._names):
            col = rows[:, j]
            col = col[np.isfinite(col)]
            if len(col) >= self.min_values:
                value = psi(self.ref["features"][name], col)
                if best is None or value > best[1]:
                    best = (f"features/{name}", value)
        for name, q in self._live.items():
            if len(q) >= self.min_values:
                value = psi(self.ref["outputs"][name], np.fromiter(q, dtype=np.float64))
                if best is None or value > best[1]:
                    best = (f"outputs/{name}", value)
        return best

    def value(self) -> float | None:
        w = self.worst()
        return None if w is None else w[1]
