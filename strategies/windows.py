"""Feature windows for the ML strategy, precomputed causally before the run.

Features are computed once per symbol over the whole frame with ``compute_features`` (causal:
the row at ``t`` uses bars ``<= t`` only, which a truncation test proves), reduced to the model
card's feature list, and looked up by bar time during the run. The window for bar ``t`` is the
``window`` rows ending at ``t``; it exists once the features' warm-up and ``window`` bars have
passed and no value in it is NaN.

A model trained on the user's own features (its card has a ``feature_module``) needs that
module's functions: :meth:`FeatureWindows.from_card` and :meth:`LiveFeatureWindows.from_card`
load the copy stored beside the model (refusing a missing or altered one) and compute the
table exactly as training did (``UserFeatures.table``, with its warm-up); ``build`` and the
constructor take the loaded module as ``user=``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.errors import DataError

if TYPE_CHECKING:
    from feeds.live_index import LiveIndex
    from mlmodels.registry import ModelCard
    from mlmodels.user_features import UserFeatures

log = logging.getLogger(__name__)


def _features_of(user: UserFeatures | None) -> tuple[Any, int]:
    """The feature table function and its warm-up: the user's module's, or the built-in."""
    from mlmodels.features import WARMUP, compute_features

    if user is None:
        return compute_features, WARMUP
    return user.table, user.total_warmup


def card_module(card: ModelCard, models_root: str | Path) -> UserFeatures | None:
    """The features module ``card``'s model was trained with, from its verified copy in the
    registry at ``models_root`` (None when the model uses the built-in features only)."""
    if not card.feature_module:
        return None
    from mlmodels.registry import ModelRegistry
    from mlmodels.user_features import from_card

    folder = ModelRegistry(models_root).path(card.ref)
    return from_card(card.feature_module, folder, card.ref)


def _missing_message(sym: str, missing: Sequence[str], index: pd.DataFrame | None) -> str:
    """Which features are missing, and the likely fix: an index (for the index-relative
    features), or the model's features module (for names that are not built in)."""
    from mlmodels.features import FEATURE_NAMES, INDEX_FEATURE_NAMES

    msg = (
        f"{sym}: the model needs {len(missing)} features the data does not give: "
        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
    )
    if index is None and any(n in INDEX_FEATURE_NAMES for n in missing):
        msg += "; it was trained with an index: pass index="
    if any(n not in FEATURE_NAMES for n in missing):
        msg += (
            "; those not built in come from the model's features module: build the windows "
            "with FeatureWindows.from_card(frames, card, models_root)"
        )
    return msg


@dataclass(frozen=True)
class SymbolFeatures:
    """One symbol's feature rows ``(T, F)`` float32, their bar times (UTC, int64 ns), and the
    running count of rows holding a NaN (``bad[i]`` = such rows before row ``i``)."""

    times: np.ndarray
    values: np.ndarray
    bad: np.ndarray

    def window_at(self, ts_ns: int, window: int) -> np.ndarray | None:
        """The ``(window, F)`` rows ending at bar time ``ts_ns``; None if that bar is unknown,
        the window would start before the data, or any row in it holds a NaN."""
        i = int(np.searchsorted(self.times, ts_ns, side="right")) - 1
        a = i - window + 1
        if i < 0 or a < 0 or self.times[i] != ts_ns or self.bad[i + 1] != self.bad[a]:
            return None
        return self.values[a : i + 1]


class FeatureWindows:
    """Precomputed, card-ordered feature rows for every symbol (see the module docstring)."""

    def __init__(self, features: Mapping[str, SymbolFeatures], names: Sequence[str], window: int):
        self.symbols = dict(features)
        self.names = list(names)
        self.window = window

    @classmethod
    def build(
        cls,
        frames: Mapping[str, pd.DataFrame],
        names: Sequence[str],
        window: int,
        *,
        index: pd.DataFrame | None = None,
        user: UserFeatures | None = None,
    ) -> FeatureWindows:
        """Compute features for ``frames`` and keep ``names`` in that order (with the user's
        features module ``user`` when the model was trained with one: see :meth:`from_card`).

        Raises ``DataError`` before any run when the data cannot give the model's features
        (a model trained with index features, run without an index, say). A symbol with too
        little history is skipped with a warning that says how many bars it needs.
        """
        compute, warmup = _features_of(user)
        out: dict[str, SymbolFeatures] = {}
        need = warmup + window
        for sym, frame in frames.items():
            if len(frame) < need:
                log.warning(
                    "%s: %d bars, the model needs at least %d (feature warm-up %d + window %d); "
                    "skipped", sym, len(frame), need, warmup, window,
                )  # fmt: skip
                continue
            table = compute(frame, index)
            missing = [n for n in names if n not in table.columns]
            if missing:
                raise DataError(_missing_message(sym, missing, index))
            values = table[list(names)].to_numpy(dtype=np.float32)
            bad = np.concatenate([[0], np.cumsum(~np.isfinite(values).all(axis=1))])
            times = pd.DatetimeIndex(table.index).as_unit("ns").asi8
            out[sym] = SymbolFeatures(times, values, bad)
        if not out:
            raise DataError(f"no symbol has the {need} bars the model needs")
        return cls(out, names, window)

    @classmethod
    def from_card(
        cls,
        frames: Mapping[str, pd.DataFrame],
        card: ModelCard,
        models_root: str | Path,
        *,
        index: pd.DataFrame | None = None,
    ) -> FeatureWindows:
        """:meth:`build` for the model of ``card`` (registered under ``models_root``): its
        feature names and window, and its features module when it has one."""
        user = card_module(card, models_root)
        return cls.build(frames, card.features, card.window, index=index, user=user)

    def window_for(self, data: object, ts_ns: int) -> np.ndarray | None:
        """The window for ``data``'s bar at ``ts_ns`` (the strategy's one lookup)."""
        feats = self.symbols.get(getattr(data, "_name", ""))
        return feats.window_at(ts_ns, self.window) if feats else None

    def warmup_end(self, symbol: str) -> pd.Timestamp | None:
        """The first bar time with a full window (None for a skipped symbol)."""
        f = self.symbols.get(symbol)
        if f is None:
            return None
        for ts in f.times[self.window - 1 :]:
            if f.window_at(int(ts), self.window) is not None:
                return pd.Timestamp(int(ts), tz="UTC")
        return None


class LiveFeatureWindows(FeatureWindows):
    """Feature windows computed as live bars arrive (paper/live trading).

    The same causal ``compute_features`` as the backtest, recomputed over the last
    ``history`` bars of a backtrader data whenever it has a new bar (a few ms per symbol), so
    the strategy is unchanged: it calls :meth:`window_for` in both modes. ``history`` must
    cover the features' warm-up plus the window; the live feed's backfill provides it. The
    exponential averages among the features remember their start, so a longer history brings
    the live values closer to a backtest's over the full data (equal once ``history`` covers
    all of it); the default is 1,000 bars.

    ``index``: the market index the model reads, a frame or a :class:`feeds.live_index.LiveIndex`
    continued live (each window then waits for the index bar of its own time).
    """

    def __init__(
        self,
        names: Sequence[str],
        window: int,
        *,
        history: int | None = None,
        index: pd.DataFrame | LiveIndex | None = None,
        user: UserFeatures | None = None,
    ) -> None:
        super().__init__({}, names, window)
        self.compute, warmup = _features_of(user)
        self.need = warmup + window
        self.history = history or max(1000, self.need)
        if self.history < self.need:
            raise DataError(
                f"history={self.history} bars is less than the {self.need} the model needs "
                f"(feature warm-up {warmup} + window {window})"
            )
        self.index = index
        self.recent: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        """Per symbol, the bar times (int64 ns) and feature rows of the last computation: a
        streaming preset's live session streams the newest row (``strategies.streamed``)."""

    @classmethod
    def from_card(  # type: ignore[override]
        cls,
        card: ModelCard,
        models_root: str | Path,
        *,
        history: int | None = None,
        index: pd.DataFrame | LiveIndex | None = None,
    ) -> LiveFeatureWindows:
        """Live windows for the model of ``card`` (registered under ``models_root``), with
        its features module when it has one."""
        user = card_module(card, models_root)
        return cls(card.features, card.window, history=history, index=index, user=user)

    def window_for(self, data: object, ts_ns: int) -> np.ndarray | None:
        """The window ending at ``data``'s current bar, from its last ``history`` bars."""
        n = min(len(data), self.history)  # type: ignore[arg-type]
        if n < self.need:
            return None
        frame = bars_frame(data, n)
        index = self.index
        if index is not None and not isinstance(index, pd.DataFrame):  # a live index: its bar
            index = index.until(frame.index[-1])  # of this time, waited for up to its deadline
        table = self.compute(frame, index)
        missing = [c for c in self.names if c not in table.columns]
        if missing:
            raise DataError(f"live features lack {', '.join(missing[:8])}")
        rows = table[self.names].to_numpy(dtype=np.float32)
        self.recent[getattr(data, "_name", "")] = (
            pd.DatetimeIndex(table.index).as_unit("ns").asi8,
            rows,
        )
        values = rows[-self.window :]
        if not np.isfinite(values).all():
            return None
        return values


def bars_frame(data: object, n: int) -> pd.DataFrame:
    """The last ``n`` bars of a backtrader data as a canonical frame (UTC index)."""
    import backtrader as bt

    d: Any = data
    stamps = np.asarray(d.datetime.get(size=n), dtype=np.float64)
    ok = np.isfinite(stamps)  # a bar interrupted while loading has no time yet: left out
    times = [bt.num2date(x) for x in stamps[ok]]
    cols = {c: np.asarray(getattr(d, c).get(size=n), dtype=np.float64)[ok]
            for c in ("open", "high", "low", "close", "volume")}  # fmt: skip
    index = pd.DatetimeIndex(pd.to_datetime(times, utc=True), name="datetime")
    tf = getattr(d, "_tf", None)  # a live feed stamping bars at their close (LiveBars):
    if getattr(getattr(d, "p", None), "stamp", "start") == "end" and tf is not None:
        index = index - tf.delta  # back to the start stamps the features were trained on
    frame = pd.DataFrame(cols, index=index)
    frame.attrs["symbol"] = getattr(d, "_name", "")
    return frame
