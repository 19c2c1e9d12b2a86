"""Every backtest is a recorded run: real backtrader runs over a real store, real files.

Two backtests in a row keep both artefact sets; ``btml runs show --json`` lists the artefacts
and the hashes of the data read; a refused request records nothing and leaves every byte of
the store as it was; ``btml tearsheet`` takes a run id; ``--plot`` writes backtrader's chart.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from analyzers.backtest import CostConfig
from btml.cli import main
from core.errors import ConfigError
from feeds.sample import load_sample
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import CARD_FILE, ModelCard, ModelRegistry
from mlmodels.trainer import TrainConfig
from strategies.audit import limits_held, outcomes_frame
from strategies.risk import DEFAULT_RULES, RiskConfig
from workflows.backtest import BacktestConfig, MLRunConfig, backtest
from workflows.errors import RunInUse
from workflows.runs import RunRegistry
from workflows.runs_info import file_sha256

SYMBOLS = ("AAPL", "IBM")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """AAPL and IBM from 2004, and a tiny model ``m:1`` trained on them."""
    root = tmp_path_factory.mktemp("runs-store")
    store = ParquetStore(root)
    sample = load_sample(adjusted=True)
    for sym in SYMBOLS:
        store.write(sample[sym].loc["2004":], merge=False)
    frames = {sym: store.read(sym, "1Day") for sym in SYMBOLS}
    train_model(
        frames, "tiny", name="m", registry=ModelRegistry(root / "models"),
        train_cfg=TrainConfig(epochs=2, batch_size=128, max_batches=5),
        data_cfg=DatasetConfig(window=16), work_dir=root / "train-work",
    )  # fmt: skip
    return root


def run_id(output: str) -> str:
    m = re.search(r"^recorded as run (\S+) in ", output, re.M)
    assert m, output
    return m.group(1)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_two_backtests_in_a_row_are_two_runs_with_their_own_artefacts(store: Path) -> None:
    cli = ["--store", str(store), "backtest", "--model", "m:1", "--symbols", "AAPL,IBM"]
    first = CliRunner().invoke(main, cli)
    assert first.exit_code == 0, first.output
    a = run_id(first.output)
    kept = snapshot(store / "runs" / a)
    second = CliRunner().invoke(main, [*cli, "--max-position", "0.1"])
    assert second.exit_code == 0, second.output
    b = run_id(second.output)
    assert a != b and not (store / "backtests").exists()
    # the second run wrote its own folder and left every byte of the first as it was
    assert snapshot(store / "runs" / a) == kept
    for rid in (a, b):
        assert {"returns.parquet", "audit.parquet", "summary.json"} <= set(
            snapshot(store / "runs" / rid)
        )
    with RunRegistry(store) as registry:
        ra, rb = registry.get(a), registry.get(b)
        assert (ra.kind, ra.status, rb.status) == ("backtest", "ok", "ok")
        assert ra.params["ml"]["risk"]["max_position"] == 0.25
        assert rb.params["ml"]["risk"]["max_position"] == 0.1
        # the configurations tried: the ML strategy and each baseline
        trials = registry.trials(b)
        assert [t["strategy"] for t in trials] == ["ml", "buyhold", "sma"] and rb.n_trials == 3
        assert trials[0]["model"] == "m:1" and trials[2]["fast"] == 10
    rets = pd.read_parquet(store / "runs" / a / "returns.parquet")
    assert list(rets.columns) == ["ml m:1", "buy-and-hold", "sma-cross 10/30"]
    summary = json.loads((store / "runs" / a / "summary.json").read_text())
    main_row = summary["runs"][0]
    for key in ("final_value", "sharpe", "max_drawdown", "trades"):
        assert ra.metrics[key] == pytest.approx(main_row[key])
    assert ra.metrics["buyhold_total_return"] == pytest.approx(summary["runs"][1]["total_return"])
    assert summary["model_card"]["name"] == "m"


def test_the_recorded_parameters_rerun_the_same_backtest(store: Path) -> None:
    """params.json is the resolved request (model version, start and end): built back with
    ``from_dict`` it runs the very same backtest."""
    request = BacktestConfig(symbols=SYMBOLS, model="m", ml=MLRunConfig(min_edge=0.02))
    first = backtest(store, request, log=lambda _: None)
    card = ModelRegistry(store / "models").card("m:1")
    with RunRegistry(store) as registry:
        params = registry.get(first.run_id).params
    assert params["model"] == "m:1" and params["start"][:10] == card.date_ranges["test"][0][:10]
    assert params == json.loads((first.run_dir / "params.json").read_text())
    again = backtest(store, BacktestConfig.from_dict(params), log=lambda _: None)
    assert again.config == first.config and again.run_id != first.run_id
    pd.testing.assert_frame_equal(
        pd.read_parquet(first.run_dir / "returns.parquet"),
        pd.read_parquet(again.run_dir / "returns.parquet"),
    )


def test_runs_show_json_lists_the_artefacts_and_the_data_hashes(store: Path) -> None:
    base = ["--store", str(store)]
    res = CliRunner().invoke(main, [*base, "backtest", "--model", "m:1", "--symbols", "AAPL,IBM",
                                    "--tearsheet", str(store.parent / "t.html")])  # fmt: skip
    assert res.exit_code == 0, res.output
    rid = run_id(res.output)
    shown = CliRunner().invoke(main, [*base, "runs", "show", rid[:22], "--json"])
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)
    assert record["id"] == rid and record["kind"] == "backtest"
    arts = ["returns.parquet", "audit.parquet", "risk_outcomes.parquet", "summary.json",
            "tearsheet.html"]  # fmt: skip
    assert record["artifacts"] == arts
    for name in arts:
        assert (store / "runs" / rid / name).stat().st_size > 0
    model = ModelRegistry(store / "models").path("m:1")
    files = [ParquetStore(store).find(s, "1Day") for s in SYMBOLS]
    files += [model / "model_card.json", model / "weights.pt"]
    assert record["inputs"] == {
        p.relative_to(store).as_posix(): file_sha256(p) for p in files if p is not None
    }
    copied = (store.parent / "t.html").read_bytes()
    assert copied == (store / "runs" / rid / "tearsheet.html").read_bytes()
    assert b"btml-ml" in copied


def test_the_risk_rules_outcomes_are_saved_beside_the_audit(store: Path) -> None:
    """``risk_outcomes.parquet``: a row per decision and rule (what it measured, what it did),
    the very table ``outcomes_frame`` makes of the run's audit trail, registered with the run."""
    risk = RiskConfig(max_position=0.002)  # below the model's ~0.5 % sizes: the cap binds
    ml = MLRunConfig(min_edge=0.0, horizon_agreement=0, risk=risk)
    out = backtest(store, BacktestConfig(symbols=SYMBOLS, model="m:1", ml=ml), log=lambda _: None)
    audit = out.results[0].strategy.audit
    saved = pd.read_parquet(out.run_dir / "risk_outcomes.parquet")
    pd.testing.assert_frame_equal(saved, outcomes_frame(audit))
    assert len(saved) == len(audit) * len(DEFAULT_RULES) > 0
    assert set(saved.rule) == {
        "position-limit", "daily-loss-stop", "drawdown-halt", "correlation", "gross-exposure",
    }  # fmt: skip
    cap = saved[saved.rule == "position-limit"]
    assert (cap.limit == 0.002).all() and cap.bound.any()  # the cap did bind, and says so
    assert (saved.target.abs() <= 0.002 + 1e-12).all()
    assert all(limits_held(audit, risk).values())
    decisions = pd.read_parquet(out.run_dir / "audit.parquet")
    assert set(zip(saved.timestamp, saved.symbol, strict=True)) == set(
        zip(decisions.timestamp, decisions.symbol, strict=True)
    )
    with RunRegistry(store) as registry:
        artifacts = registry.get(out.run_id).artifacts
    assert artifacts[:3] == ("returns.parquet", "audit.parquet", "risk_outcomes.parquet")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "m:1", "--start", "2006-01-01"], "inside m:1's training range"),
        (["--model", "nope"], "no model called 'nope'"),
        (["--model", "m:1", "--end", "2005-01-01"], "no bars between"),
        (["--baseline", "sma", "--start", "2030-01-01"], "no bars between 2030-01-01"),
        (["--baseline", "sma", "--symbols", "NOPE"], "NOPE (1Day) is not in the store"),
        (["--baseline", "sma", "--start", "yesterday-ish"], "start: 'yesterday-ish' is not a date"),
        (["--baseline", "sma", "--plot", "chart.jpg"], "must end in .png"),
        (["--model", "m:1", "--max-position", "2"], "max_position must be in (0, 1]"),
        (["--model", "m:1", "--baseline", "sma"], "exactly one of --model or --baseline"),
        ([], "exactly one of --model or --baseline"),
    ],
)
def test_a_refused_backtest_records_nothing_and_changes_nothing(
    store: Path, args: list[str], message: str
) -> None:
    before = snapshot(store)
    cli = ["--store", str(store), "backtest", "--symbols", "AAPL"]
    res = CliRunner().invoke(main, [*cli, *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output
    assert snapshot(store) == before  # no run row, no run folder, no registry created


def test_a_start_inside_the_validation_range_is_refused(store: Path) -> None:
    """The validation bars chose the model (early stopping, the direction refit): a backtest
    starting there is in-sample. It was accepted silently; now it is refused, naming both
    ranges, and nothing is recorded."""
    card = ModelRegistry(store / "models").card("m:1")
    val, test = card.date_ranges["val"], card.date_ranges["test"]
    before = snapshot(store)
    cli = ["--store", str(store), "backtest", "--symbols", "AAPL", "--model", "m:1"]
    res = CliRunner().invoke(main, [*cli, "--start", val[0][:10]])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"inside m:1's validation range ({val[0][:10]} to {val[1][:10]})" in res.output
    assert f"start after {val[1][:10]} (the test range starts {test[0][:10]})" in res.output
    assert snapshot(store) == before


def test_the_workflow_refuses_before_it_opens_the_registry(tmp_path: Path) -> None:
    """On a store that has never recorded a run, a refusal does not even create the
    registry's database."""
    ParquetStore(tmp_path).write(load_sample(adjusted=True)["IBM"].loc["2010"], merge=False)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="the plot file must end in .png"):
        backtest(tmp_path, BacktestConfig(symbols=("IBM",), baseline="sma", plot=True),
                 plot_to=tmp_path / "p.svg")  # fmt: skip
    with pytest.raises(ConfigError, match="needs the tearsheet itself"):
        backtest(tmp_path, BacktestConfig(symbols=("IBM",), baseline="sma"),
                 tearsheet_to=tmp_path / "t.html")  # fmt: skip
    assert snapshot(tmp_path) == before and not (tmp_path / "runs.sqlite").exists()


def test_tearsheet_by_run_id_or_prefix(store: Path) -> None:
    base = ["--store", str(store)]
    res = CliRunner().invoke(main, [*base, "backtest", "--model", "m:1", "--symbols", "AAPL"])
    assert res.exit_code == 0, res.output
    rid = run_id(res.output)
    out = store.parent / "by-id.html"
    sheet = CliRunner().invoke(main, [*base, "tearsheet", rid[:22], "--out", str(out)])
    assert sheet.exit_code == 0, sheet.output
    assert f"tearsheet: {out}" in sheet.output
    page = out.read_text()
    assert "ml m:1 vs buy-and-hold" in page and "btml-ml" in page and "Sharpe" in page
    with RunRegistry(store) as registry, registry.start("import", {"file": "x.csv"}) as other:
        pass
    res = CliRunner().invoke(main, [*base, "tearsheet", other.id, "--out", str(out)])
    assert res.exit_code == 2 and f"run {other.id} (import) has no returns.parquet" in res.output
    res = CliRunner().invoke(main, [*base, "tearsheet", "1999", "--out", str(out)])
    assert res.exit_code == 2 and "no run '1999'" in res.output


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_backtraders_chart_as_a_png(store: Path, tmp_path: Path) -> None:
    import matplotlib.image

    out = tmp_path / "charts" / "sma.png"
    cli = ["--store", str(store), "backtest", "--baseline", "sma", "--symbols", "AAPL,IBM",
           "--start", "2011-01-01", "--plot", str(out)]  # fmt: skip
    res = CliRunner().invoke(main, cli)
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    width, height = png_size(data)
    assert width > 1000 and height > 500
    pixels = matplotlib.image.imread(out)
    assert float(np.std(pixels[..., :3])) > 0.05  # a drawn chart, not a blank canvas
    rid = run_id(res.output)
    assert (store / "runs" / rid / "plot.png").read_bytes() == data
    with RunRegistry(store) as registry:
        record = registry.get(rid)
    assert record.artifacts == ("returns.parquet", "summary.json", "plot.png")
    assert record.params["plot"] is True and record.params["tearsheet"] is False


def test_a_model_trained_by_a_recorded_run_is_linked_to_it(store: Path) -> None:
    """When the card names its training run, the backtest depends on it (and so that run
    cannot be removed); a card naming a run the registry does not hold is noted, not fatal."""
    with RunRegistry(store) as registry, registry.start("train", {"arch": "tiny"}) as train:
        pass
    source = ModelRegistry(store / "models").path("m:1")
    for name, parent in (("linked", train.id), ("orphan", "20000101T000000.000000Z-000000")):
        folder = store / "models" / name / "v1"
        shutil.copytree(source, folder)
        card = dataclasses.replace(ModelCard.from_file(folder / CARD_FILE), name=name)
        (folder / CARD_FILE).write_text(dataclasses.replace(card, training_run=parent).to_json())
        lines: list[str] = []
        request = BacktestConfig(symbols=("IBM",), model=f"{name}:1")
        res = backtest(store, request, log=lines.append)
        with RunRegistry(store) as registry:
            record = registry.get(res.run_id)
            if parent == train.id:
                assert record.parents == (train.id,)
                with pytest.raises(RunInUse):
                    registry.remove(train.id)
            else:
                assert record.parents == () and record.status == "ok"
                assert any(f"training run {parent} is not in the run registry" in x for x in lines)
    plain = backtest(store, BacktestConfig(symbols=("IBM",), model="m:1"), log=lambda _: None)
    with RunRegistry(store) as registry:  # a card without a training run: no parent
        assert registry.get(plain.run_id).parents == ()


def test_the_request_is_plain_data() -> None:
    request = BacktestConfig(
        symbols=SYMBOLS, model="m:1", start="2012-01-02", costs=CostConfig(slippage=0.002),
        ml=MLRunConfig(allow_short=True, risk=RiskConfig(max_position=0.2)), tearsheet=True,
    )  # fmt: skip
    data = request.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert BacktestConfig.from_dict(data) == request
    data["ml"]["risk"]["max_positon"] = 0.3
    with pytest.raises(ConfigError, match="max_positon"):
        BacktestConfig.from_dict(data)
    with pytest.raises(ConfigError, match="applies to a --model run only"):
        BacktestConfig(symbols=SYMBOLS, baseline="sma", ml=MLRunConfig())
    with pytest.raises(ConfigError, match="start 2013-01-01 is after end 2012-01-01"):
        BacktestConfig(symbols=SYMBOLS, baseline="sma", start="2013-01-01", end="2012-01-01")
    with pytest.raises(ConfigError, match="min_edge must be in"):
        MLRunConfig(min_edge=1.5)


def test_a_model_backtest_reports_every_head_against_its_naive_baseline(store: Path) -> None:
    """metrics.json holds the report training writes for its test split, over the backtest's
    signals: every head with its 95 % interval beside its naive baseline (the card's prior,
    the training mean, the trailing volatility); the printed summary has its edge line."""
    from mlmodels.labels import make_labels

    res = CliRunner().invoke(main, ["--store", str(store), "backtest", "--model", "m:1",
                                    "--symbols", "AAPL,IBM"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rid = run_id(res.output)
    m = json.loads((store / "runs" / rid / "metrics.json").read_text())
    assert m["oos_edge"].startswith(("edge: ", "no edge: "))
    table = res.output[res.output.index("final value") :]
    assert f"\n{m['oos_edge']}\n" in table and "backtest signals: " in table
    heads = ["direction", "price_1", "price_4", "price_24", "volatility", "confidence"]
    naive = {"direction": "majority", "volatility": "trailing", "confidence": "constant"}
    metric = {"direction": "accuracy", "volatility": "mae", "confidence": "brier"}
    for head in heads:
        key = f"oos_{head}_network_{metric.get(head, 'rank_ic')}"
        assert m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"], head
        assert m[f"oos_{head}_{naive.get(head, 'mean')}_{metric.get(head, 'rank_ic')}"] is not None
    for h in (1, 4, 24):  # IC and hit rate per horizon, with intervals
        for stat in ("ic", "hit_rate"):
            assert m[f"oos_price_{h}_network_{stat}_lo"] is not None
    # the figures, recomputed from the saved decisions and the stored bars
    card = ModelRegistry(store / "models").card("m:1")
    audit = pd.read_parquet(store / "runs" / rid / "audit.parquet").dropna(subset=["p_up"])
    rows = []
    for sym, dec in audit.groupby("symbol"):
        lab = make_labels(ParquetStore(store).read(sym, "1Day"), card.label_cfg())
        rows.append(dec.join(lab.add_prefix("y_"), on="timestamp"))
    got = pd.concat(rows).dropna(subset=["y_direction"])
    assert len(got) > 100 and m["oos_direction_network_accuracy"] is not None
    calls = got[["p_down", "p_flat", "p_up"]].to_numpy().argmax(axis=1)
    assert m["oos_direction_network_accuracy"] == pytest.approx((calls == got.y_direction).mean())
    prior = card.report["naive"]["prior"]  # the training split's, from the card
    assert m["oos_direction_majority_accuracy"] == pytest.approx(
        (got.y_direction == np.argmax(prior)).mean()
    )
    hits = np.sign(got.ret_4) * np.sign(got.y_ret_4)
    assert m["oos_price_4_network_hit_rate"] == pytest.approx(
        np.where(hits == 0, 0.5, hits > 0).mean()
    )
