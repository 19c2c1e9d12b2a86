"""The out-of-sample report of a model backtest (analyzers.oos_report): decisions scored
against the labels of their own bar, the naive forecasts from the card or, for an older
card, from the stored bars over its training range."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analyzers.oos_report import backtest_report, result_report
from core.errors import DataError
from mlmodels.labels import LabelConfig, make_labels
from tests.conftest import ohlcv_frame

LABELS = LabelConfig()
FRAMES = {s: ohlcv_frame(400, symbol=s, seed=k) for k, s in enumerate(("A", "B", "C"))}
DAYS = FRAMES["A"].index


def card(naive: dict[str, Any] | None = None) -> Any:
    """What the report reads of a model card; ``naive`` as a newer card's report records it."""
    return SimpleNamespace(
        ref="m:1", horizons=[1, 4, 24], label_cfg=lambda: LABELS,
        report={"naive": naive} if naive else None,
        date_ranges={"train": [DAYS[30].isoformat(), DAYS[200].isoformat()]},
        metrics={"val": {"direction_accuracy": 0.45}},
    )  # fmt: skip


def decisions(shift: int = 0) -> pd.DataFrame:
    """A decision per symbol and bar from bar 250 whose heads foresee the labels of the bar
    ``shift`` bars later (0: its own bar)."""
    rows = []
    for sym, frame in FRAMES.items():
        lab = make_labels(frame, LABELS).shift(-shift).iloc[250:]
        probs = np.eye(3)[lab["direction"].fillna(1).astype(int)] * 0.9 + 0.1 / 3
        rows.append(pd.DataFrame({
            "timestamp": lab.index, "symbol": sym, "p_down": probs[:, 0], "p_flat": probs[:, 1],
            "p_up": probs[:, 2], **{f"ret_{h}": lab[f"ret_{h}"].fillna(0) for h in (1, 4, 24)},
            "volatility": lab["volatility"].fillna(0.01), "confidence": 0.9,
        }))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def test_a_decision_is_scored_against_the_labels_of_its_own_bar() -> None:
    naive = {"prior": [0.3, 0.4, 0.3], "mean_returns": {"1": 0.0, "4": 0.0, "24": 0.0},
             "confidence_base_rate": 0.4}  # fmt: skip
    rep = backtest_report(decisions(), FRAMES, card(naive), reps=100)
    heads = rep["heads"]
    assert rep["split"] == "backtest" and rep["naive_from"] == "card"
    # the last lookahead bars have no labels within the data: left out
    assert rep["n"] == 3 * (400 - 250 - LABELS.lookahead)
    assert heads["direction"]["models"]["network"]["accuracy"]["value"] == 1.0
    assert heads["price_4"]["models"]["network"]["ic"]["value"] == pytest.approx(1.0)
    assert heads["direction"]["models"]["majority"]["accuracy"]["value"] < 0.6  # the prior's call
    assert rep["edge"]["summary"].startswith("edge: ")
    late = backtest_report(decisions(shift=1), FRAMES, card(naive), reps=100)
    assert late["heads"]["direction"]["models"]["network"]["accuracy"]["value"] < 0.6


def test_an_older_card_takes_its_naive_forecasts_from_the_training_range() -> None:
    rep = backtest_report(decisions(), FRAMES, card(), reps=50)
    train = pd.concat(make_labels(f, LABELS).loc[DAYS[30] : DAYS[200]] for f in FRAMES.values())
    prior = np.bincount(train["direction"].astype(int), minlength=3) / len(train)
    assert rep["naive_from"] == "stored bars over the training range"
    np.testing.assert_allclose(rep["naive"]["prior"], prior)
    assert rep["naive"]["mean_returns"]["24"] == pytest.approx(train["ret_24"].mean())
    assert rep["naive"]["confidence_base_rate"] == 0.45  # the card's validation accuracy


def test_no_signal_is_a_note_not_a_report() -> None:
    none = decisions().assign(p_up=np.nan)
    with pytest.raises(DataError, match="no decision had a signal"):
        backtest_report(none, FRAMES, card())
    notes: list[str] = []
    assert result_report(SimpleNamespace(strategy=None), FRAMES, card(), notes.append) is None
    assert notes == ["no out-of-sample report per head: no decision had a signal"]
