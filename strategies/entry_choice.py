"""``entry_rule="auto"``: choose the ML strategy's entry rule on the model's validation split.

Once, before a backtest, each rule (``direction`` and ``return``, ``strategies.ml_signal``) is
evaluated over the validation bars (the card's ``date_ranges["val"]``): bars the model never
trained on, that early stopping already looked at, and that the backtest (which starts after
them) never trades. The rule with the higher figure is traded; a tie keeps ``direction``.

How, and why this way rather than a small backtest over the validation range:

1. One batched prediction per chunk of validation windows, in process (``btml backtest``
   uses the run's client when it is in-process, else an in-process client of the same model
   version: the TorchServe parity test shows both give the same numbers), each window with a
   flat position state, instead of one request per bar.
2. Each rule's position on each bar is replayed with the strategy's own decision function
   (``desired_weight``, unit size, starting flat), so the rules are exactly the ones traded.
3. The position taken at bar ``t``'s close earns the log return to the next close within the
   range; a change of position costs half the round trip (``round_trip_cost``, commission and
   slippage on both sides) per unit. The figure is the summed net log return per symbol,
   averaged over the symbols, with the number of trades and the exposure beside it.

It compares the rules, not the sizer or the risk rules (both rules go through the same ones
in the backtest), and it is a vectorised estimate: it fills at the close instead of the next
open and gives the model a flat position state while a position is held (the strategy sends
the held one). Both are the same for both rules, and the choice costs one pass of the model
over the validation bars instead of two backtests with a model request per bar.

When there is nothing to choose on (the card has no validation range, or the data none of its
bars with a full feature window) ``auto`` keeps ``direction`` and says why
(:meth:`EntryChoice.kept`, recorded as ``entry_rule_note``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError
from serving.client import SignalClient
from serving.signal import Signal
from strategies.entry_rules import desired_weight
from strategies.ml_signal import MLSignalConfig
from strategies.windows import FeatureWindows

RULES = ("direction", "return")  # what ``auto`` chooses between, the tie-breaker first
CHUNK = 256  # windows per prediction request


@dataclass(frozen=True)
class RuleFigures:
    """One rule over the validation bars: ``net_return`` (summed net log return per symbol,
    averaged over the symbols), ``trades`` (position changes into a position), ``exposure``
    (share of bars with a position)."""

    rule: str
    net_return: float
    trades: int
    exposure: float


@dataclass(frozen=True)
class EntryChoice:
    """The rule ``auto`` chose, both rules' figures, and what they were measured on; or, when
    there was nothing to choose on (``reason``), ``direction`` kept and why."""

    chosen: str
    figures: tuple[RuleFigures, ...] = ()
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    bars: int = 0
    round_trip_cost: float = 0.0
    reason: str | None = None

    @classmethod
    def kept(cls, reason: str) -> EntryChoice:
        """No validation bars to choose on: ``direction`` (the rule before ``auto``) is kept."""
        return cls(chosen="direction", reason=reason)

    def metrics(self) -> dict[str, Any]:
        """``entry_rule_chosen`` and each rule's ``entry_val_return_*``, ``entry_val_trades_*``
        and ``entry_val_exposure_*`` (or ``entry_rule_note``: why nothing was compared)."""
        out: dict[str, Any] = {"entry_rule_chosen": self.chosen}
        if self.reason is not None:
            out["entry_rule_note"] = self.reason
        for f in self.figures:
            out[f"entry_val_return_{f.rule}"] = f.net_return
            out[f"entry_val_trades_{f.rule}"] = f.trades
            out[f"entry_val_exposure_{f.rule}"] = f.exposure
        return out

    def line(self) -> str:
        """One line for a printed summary."""
        if self.reason is not None or self.start is None or self.end is None:
            return f"entry rule: auto kept {self.chosen}: {self.reason}"
        each = ", ".join(
            f"{f.rule} {f.net_return:+.2%} ({f.trades} trades)"
            for f in sorted(self.figures, key=lambda f: f.rule != self.chosen)
        )
        return (
            f"entry rule: auto chose {self.chosen} on the validation split "
            f"{self.start.date()} .. {self.end.date()} ({self.bars} bars, net of "
            f"{self.round_trip_cost:.2%} a round trip): {each}"
        )


def validation_range(
    date_ranges: Mapping[str, Sequence[str]], ref: str
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The card's validation range as UTC timestamps; refused when the card has none."""
    val = date_ranges.get("val")
    if not val or len(val) != 2:
        raise DataError(f"model {ref} has no validation range in its card to choose on")
    lo, hi = (pd.Timestamp(v) for v in val)
    return (
        lo.tz_localize("UTC") if lo.tzinfo is None else lo.tz_convert("UTC"),
        hi.tz_localize("UTC") if hi.tzinfo is None else hi.tz_convert("UTC"),
    )


def validation_bars(
    windows: FeatureWindows, start: pd.Timestamp, end: pd.Timestamp
) -> dict[str, np.ndarray]:
    """Per symbol, the bar times (int64 ns, UTC) in ``[start, end]`` with a full window."""
    out = {}
    for sym, feats in windows.symbols.items():
        times = feats.times[(feats.times >= start.value) & (feats.times <= end.value)]
        ok = [t for t in times if feats.window_at(int(t), windows.window) is not None]
        if ok:
            out[sym] = np.asarray(ok, dtype=np.int64)
    return out


def check_validation_bars(
    windows: FeatureWindows, start: pd.Timestamp, end: pd.Timestamp, ref: str
) -> None:
    """Refuse data that holds no validation bar with a full window."""
    if not validation_bars(windows, start, end):
        raise DataError(
            f"the data has no bar of {ref}'s validation range {start.date()} .. {end.date()} "
            "with a full feature window to choose on (give the symbols' full history)"
        )


def choice_range(
    date_ranges: Mapping[str, Sequence[str]], ref: str, windows: FeatureWindows
) -> tuple[tuple[pd.Timestamp, pd.Timestamp] | None, str | None]:
    """The validation range ``auto`` can choose on, or None and why not (the model's card has
    no validation range, or the data none of its bars): then ``direction`` is kept."""
    try:
        val = validation_range(date_ranges, ref)
        check_validation_bars(windows, *val, ref)
    except DataError as err:
        return None, str(err)
    return val, None


def _predict(
    client: SignalClient, windows: FeatureWindows, sym: str, times: np.ndarray
) -> list[Signal]:
    feats = windows.symbols[sym]
    out: list[Signal] = []
    for k in range(0, len(times), CHUNK):
        part = times[k : k + CHUNK]
        found = [feats.window_at(int(t), windows.window) for t in part]
        wins = np.stack([w for w in found if w is not None])
        assert len(wins) == len(part), "validation_bars keeps bars with a full window only"
        stamps = [pd.Timestamp(int(t), tz="UTC").isoformat() for t in part]
        out += client.predict(
            wins, np.zeros((len(part), 3), dtype=np.float32), symbols=[sym] * len(part),
            timestamps=stamps,
        )  # fmt: skip
    return out


def rule_positions(signals: Sequence[Signal], cfg: MLSignalConfig, rule: str) -> np.ndarray:
    """Each bar's unit position under ``rule`` (+1, 0, -1), replayed from flat with the
    strategy's own ``desired_weight``."""
    rcfg = dataclasses.replace(cfg, entry_rule=rule)
    pos = np.zeros(len(signals))
    current = 0.0
    for i, sig in enumerate(signals):
        current = float(np.sign(desired_weight(sig, current, rcfg, 1.0)))
        pos[i] = current
    return pos


def net_returns(positions: np.ndarray, closes: np.ndarray, round_trip_cost: float) -> np.ndarray:
    """Per bar: the position times the log return to the next close (none after the last
    bar), less half ``round_trip_cost`` per unit of position change."""
    nxt = np.zeros(len(closes))
    nxt[:-1] = np.diff(np.log(closes))
    change = np.abs(np.diff(np.concatenate([[0.0], positions])))
    return positions * nxt - change * round_trip_cost / 2


def choose_entry_rule(
    client: SignalClient,
    windows: FeatureWindows,
    frames: Mapping[str, pd.DataFrame],
    cfg: MLSignalConfig,
    val: tuple[pd.Timestamp, pd.Timestamp],
) -> EntryChoice:
    """Evaluate both rules over the validation bars ``val`` (see the module docstring)."""
    start, end = val
    bars = validation_bars(windows, start, end)
    if not bars:
        check_validation_bars(windows, start, end, "the model")
    per_rule: dict[str, list[tuple[float, int, float]]] = {r: [] for r in RULES}
    for sym, times in bars.items():
        signals = _predict(client, windows, sym, times)
        closes = frames[sym]["close"].reindex(pd.DatetimeIndex(pd.to_datetime(times, utc=True)))
        for rule in RULES:
            pos = rule_positions(signals, cfg, rule)
            net = net_returns(pos, closes.to_numpy(dtype=np.float64), cfg.round_trip_cost)
            entries = int(np.sum((pos != 0) & (pos != np.concatenate([[0.0], pos[:-1]]))))
            per_rule[rule].append((float(net.sum()), entries, float(np.mean(pos != 0))))
    figures = tuple(
        RuleFigures(
            rule=r,
            net_return=float(np.mean([x[0] for x in per_rule[r]])),
            trades=sum(x[1] for x in per_rule[r]),
            exposure=float(np.mean([x[2] for x in per_rule[r]])),
        )
        for r in RULES
    )
    best = max(figures, key=lambda f: f.net_return)  # max keeps the first of equals: direction
    return EntryChoice(
        chosen=best.rule, figures=figures, start=start, end=end,
        bars=sum(len(t) for t in bars.values()), round_trip_cost=cfg.round_trip_cost,
    )  # fmt: skip
