"""Champion and challenger (issue "operating it"): the shadow test, ``btml models promote``
and ``rollback``, the champion ``NAME`` means, pruning to the last N versions, and the
refusals (never shadowed, too few bars, nothing to roll back to) that change nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from btml.cli import main
from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig
from strategies.shadow import SHADOW_FILE
from workflows.promotion import (
    PromoteConfig,
    champion_stack,
    promote,
    rollback,
    shadow_rows,
    shadow_test,
)
from workflows.runs import RunRegistry

pytestmark = pytest.mark.timeout(300)
SYMBOLS = ("AAA", "BBB", "CCC")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    market = generate_market(SyntheticConfig(n_symbols=2, n_bars=700, seed=3))
    root = tmp_path_factory.mktemp("trained")
    return train_model(
        market, "tiny", name="m", registry=ModelRegistry(root / "models"),
        train_cfg=TrainConfig(epochs=1, batch_size=64, seed=0, threads=1),
        data_cfg=DatasetConfig(window=16),
    )  # fmt: skip


def _store(tmp_path: Path, trained: Any, versions: int) -> Path:
    """A store whose registry holds ``versions`` versions of ``m``."""
    model, card = trained
    registry = ModelRegistry(tmp_path / "models")
    for _ in range(versions):
        registry.register(model, card)
    return tmp_path


def _market_rows(bars: int, seed: int, skill: dict[str, float]) -> list[dict[str, Any]]:
    """Shadow rows over ``bars`` bars of three symbols: each model's 1-bar prediction is the
    next return times its ``skill`` plus noise (a model's direction is its prediction's sign)."""
    rng = np.random.default_rng(seed)
    rets = rng.normal(0, 0.01, (bars + 1, len(SYMBOLS)))
    closes = 100 * np.exp(np.cumsum(rets, axis=0))
    times = pd.date_range("2026-03-02 14:30", periods=bars + 1, freq="1min", tz="UTC")
    rows = []
    for t in range(bars + 1):
        for k, sym in enumerate(SYMBOLS):
            nxt = rets[t + 1, k] if t < bars else 0.0
            row: dict[str, Any] = {"t": times[t].isoformat(), "symbol": sym,
                                   "close": float(closes[t, k]), "error": None}  # fmt: skip
            for who, ref in (("champion", "m:1"), ("challenger", "m:2")):
                pred = skill[who] * nxt + rng.normal(0, 0.01)
                row[who] = {"ref": ref, "return_1": pred, "p_up": 0.5,
                            "direction": int(np.sign(pred)), "confidence": 0.5}  # fmt: skip
            rows.append(row)
    return rows


def _session(store: Path, rows: list[dict[str, Any]], shadow: str = "m:2") -> str:
    """A finished session run of champion m:1 with ``shadow`` scored beside it."""
    with (
        RunRegistry(store) as runs,
        runs.start("session", {"model": "m:1", "shadow": shadow}) as run,
    ):
        (run.dir / SHADOW_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return run.id


def _snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and "runs.sqlite" not in p.name}  # fmt: skip


def _flat(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as :func:`shadow_rows` flattens them."""
    cols = {f"{who}_{name}": [r[who][key] for r in rows] for who in ("champion", "challenger")
            for name, key in (("return", "return_1"), ("direction", "direction"))}  # fmt: skip
    frame = pd.DataFrame({"t": pd.to_datetime([r["t"] for r in rows], utc=True),
                          "symbol": [r["symbol"] for r in rows],
                          "close": [r["close"] for r in rows], **cols})  # fmt: skip
    return frame.sort_values(["symbol", "t"]).reset_index(drop=True)


def test_the_shadow_test_finds_the_better_model_and_not_a_worse_one() -> None:
    better = _flat(_market_rows(300, 0, {"champion": 0.0, "challenger": 1.0}))
    for test in ("ic", "pnl"):
        out = shadow_test(better, "m:1", "m:2", ["s"], PromoteConfig(test=test, reps=300))
        assert out.passed and out.bars == 300, out.line()
        assert out.challenger_value > out.champion_value
    worse = _flat(_market_rows(300, 0, {"champion": 1.0, "challenger": 0.0}))
    out = shadow_test(worse, "m:1", "m:2", ["s"], PromoteConfig(reps=300))
    assert not out.passed and out.difference["value"] < 0
    same = _flat(_market_rows(300, 1, {"champion": 0.0, "challenger": 0.0}))
    out = shadow_test(same, "m:1", "m:2", ["s"], PromoteConfig(reps=300))
    assert not out.passed and out.difference["lo"] < 0 < out.difference["hi"]


def test_promote_switches_the_champion_records_a_run_and_rollback_returns(
    tmp_path: Path, trained: Any
) -> None:
    store = _store(tmp_path, trained, 2)
    registry = ModelRegistry(store / "models")
    registry.set_champion("m", 1, {"version": 1, "action": "initial"})
    assert registry.card("m").ref == "m:1"  # the champion, not the latest
    session = _session(store, _market_rows(200, 2, {"champion": 0.0, "challenger": 1.0}))
    out = promote(store, "m:2", PromoteConfig(min_bars=100, reps=300), log=lambda _: None)
    assert out.promoted and out.test.sessions == (session,)
    assert registry.card("m").ref == "m:2" and champion_stack(registry, "m") == [1, 2]
    with RunRegistry(store) as runs:
        rec = runs.get(out.run_id)
        assert rec.kind == "promotion" and rec.status == "ok" and rec.metrics["promoted"]
        assert rec.metrics["test"]["difference"]["lo"] > 0 and session in rec.parents
    run_id, card = rollback(store, "m", log=lambda _: None)
    assert card.ref == "m:1" and registry.card("m").ref == "m:1"
    assert champion_stack(registry, "m") == [1]
    history = registry.champion_record("m")["history"]
    assert [h["action"] for h in history] == ["initial", "promote", "rollback"]
    assert history[-1]["run"] == run_id


def test_a_challenger_that_does_not_beat_the_champion_is_not_promoted(
    tmp_path: Path, trained: Any
) -> None:
    store = _store(tmp_path, trained, 2)
    registry = ModelRegistry(store / "models")
    registry.set_champion("m", 1, {"version": 1, "action": "initial"})
    _session(store, _market_rows(200, 4, {"champion": 1.0, "challenger": 0.0}))
    result = CliRunner().invoke(main, ["--store", str(store), "models", "promote", "m:2",
                                       "--min-bars", "100"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "not promoted" in result.output and "difference -" in result.output
    assert registry.card("m").ref == "m:1"
    with RunRegistry(store) as runs:
        assert [r.metrics["promoted"] for r in runs.list(kind="promotion")] == [False]


@pytest.mark.parametrize(
    ("rows", "args", "message"),
    [
        (None, ["m:2"], "m:2 was never scored in shadow against the champion m:1"),
        ("other", ["m:2"], "m:2 was never scored in shadow against the champion m:1"),
        (40, ["m:2"], "m:2 has 40 shadow bars against m:1; --min-bars needs 100"),
        (200, ["m:1"], "m:1 is already the champion of m"),
        (200, ["m:2", "--keep", "1"], "--keep must be >= 2"),
        (200, ["m:9"], "model m has no version 9"),
    ],
)
def test_refused_promotions_say_why_and_change_nothing(
    tmp_path: Path, trained: Any, rows: Any, args: list[str], message: str
) -> None:
    store = _store(tmp_path, trained, 2)
    ModelRegistry(store / "models").set_champion("m", 1, {"version": 1, "action": "initial"})
    if rows == "other":  # shadowed, but beside another champion
        _session(store, _market_rows(200, 5, {"champion": 0, "challenger": 1}), shadow="m:3")
    elif rows is not None:
        _session(store, _market_rows(rows, 5, {"champion": 0, "challenger": 1}))
    before = _snapshot(store)
    with RunRegistry(store) as runs:
        count = runs.count()
    result = CliRunner().invoke(main, ["--store", str(store), "models", "promote", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _snapshot(store) == before
    with RunRegistry(store) as runs:
        assert runs.count() == count


def test_rollback_without_an_earlier_champion_is_refused(tmp_path: Path, trained: Any) -> None:
    store = _store(tmp_path, trained, 2)
    before = _snapshot(store)
    result = CliRunner().invoke(main, ["--store", str(store), "models", "rollback", "m"])
    assert result.exit_code == 2 and "m has no earlier champion" in result.output
    assert _snapshot(store) == before


def test_a_promotion_keeps_the_newest_versions_and_every_rollback_target(
    tmp_path: Path, trained: Any
) -> None:
    store = _store(tmp_path, trained, 7)
    registry = ModelRegistry(store / "models")
    registry.set_champion("m", 1, {"version": 1, "action": "initial"})
    rows = _market_rows(150, 6, {"champion": 0.0, "challenger": 1.0})
    for r in rows:
        r["challenger"]["ref"] = "m:7"
    with (
        RunRegistry(store) as runs,
        runs.start("session", {"model": "m:1", "shadow": "m:7"}) as run,
    ):
        (run.dir / SHADOW_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = promote(store, "m:7", PromoteConfig(min_bars=100, keep=3, reps=200), log=lambda _: None)
    assert out.promoted and out.pruned == ("m:2", "m:3", "m:4")
    assert registry.versions("m") == [1, 5, 6, 7]  # m:1 stays: a rollback returns to it
    assert rollback(store, "m", log=lambda _: None)[1].ref == "m:1"


def test_shadow_rows_ignore_a_partial_last_line_and_rows_without_both_signals(
    tmp_path: Path,
) -> None:
    rows = _market_rows(30, 7, {"champion": 0.0, "challenger": 1.0})
    rows[0]["challenger"] = None  # the challenger failed on that bar
    with (
        RunRegistry(tmp_path) as runs,
        runs.start("session", {"model": "m:1", "shadow": "m:2"}) as run,
    ):
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (run.dir / SHADOW_FILE).write_text(text + '{"t": "2026-03-')  # killed mid-write
    with RunRegistry(tmp_path) as runs:
        frame, sessions = shadow_rows(runs, "m:1", "m:2")
    assert len(frame) == len(rows) - 1 and sessions == (run.id,)


def test_the_shadow_scorer_never_blocks_and_records_a_failing_challenger(
    tmp_path: Path, trained: Any
) -> None:
    """The real in-process client scores; one that fails leaves rows with the error; one that
    hangs makes bars drop from a full queue while ``submit`` returns at once."""
    import threading
    import time

    from serving.client import InProcessClient, ServingUnavailable
    from serving.signal import Signal
    from strategies.shadow import ShadowScorer

    store = _store(tmp_path, trained, 1)
    card = trained[1]
    client = InProcessClient.from_registry(store / "models", "m:1")
    wins = [np.random.default_rng(0).normal(size=(card.window, len(card.features)))] * 2
    states, names, closes = np.zeros((2, 3)), ["AAA", "BBB"], [10.0, 20.0]
    champion = client.predict(np.stack(wins), states)
    scorer = ShadowScorer(client, tmp_path / "ok.jsonl")
    scorer.submit(wins, states, names, closes, champion, "2026-03-02T14:30:00+00:00")
    assert scorer.close() == {"shadow_bars": 1, "shadow_dropped": 0, "shadow_failed": 0,
                              "shadow_ms_per_bar": pytest.approx(scorer.seconds * 1000)}  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "ok.jsonl").read_text().splitlines()]
    assert [r["challenger"]["return_1"] for r in rows] == pytest.approx(
        [s.returns[0] for s in champion]
    )  # the same model on the same windows
    assert [r["symbol"] for r in rows] == names and rows[0]["close"] == 10.0

    class Failing(InProcessClient):
        def predict(self, *a: Any, **k: Any) -> list[Signal]:
            raise ServingUnavailable("challenger down")

    failing = ShadowScorer(
        Failing.from_registry(store / "models", "m:1"), tmp_path / "failing.jsonl"
    )
    failing.submit(wins, states, names, closes, champion, "2026-03-02T14:31:00+00:00")
    assert failing.close()["shadow_failed"] == 1
    rows = [json.loads(x) for x in (tmp_path / "failing.jsonl").read_text().splitlines()]
    assert all(r["challenger"] is None and "challenger down" in r["error"] for r in rows)

    release = threading.Event()

    class Hanging(InProcessClient):
        def predict(self, *a: Any, **k: Any) -> list[Signal]:
            release.wait(30)
            return super().predict(*a, **k)

    hanging = ShadowScorer(
        Hanging.from_registry(store / "models", "m:1"), tmp_path / "hanging.jsonl", queue_size=2
    )
    began = time.perf_counter()
    for i in range(10):
        hanging.submit(wins, states, names, closes, champion, f"2026-03-02T14:{32 + i}:00+00:00")
    assert time.perf_counter() - began < 5  # generous: submit never waits for the challenger
    release.set()
    counts = hanging.close()
    assert counts["shadow_dropped"] >= 7 and counts["shadow_bars"] + counts["shadow_dropped"] == 10
