"""``btml demo`` records its steps as runs and prints where they are, offline."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import workflows.demo as demo
from btml.cli import main
from feeds.sample import SAMPLE_FILE
from feeds.store import ParquetStore
from serving.server import ServerConfig, read_state
from workflows.runs import RunRegistry
from workflows.runs_info import file_sha256


def test_the_import_of_the_sample_is_a_recorded_run(tmp_path: Path) -> None:
    out = demo.DemoResult(store=tmp_path)
    lines: list[str] = []
    frames = demo._store_market(ParquetStore(tmp_path), False, out, lines.append)
    assert list(frames) == list(demo.DEMO_SYMBOLS)
    ((kind, run_id, folder),) = out.runs
    with RunRegistry(tmp_path) as registry:
        record = registry.get(run_id)
    assert (kind, record.kind, record.status, record.dir) == ("import", "import", "ok", folder)
    assert record.params == {"source": "sample", "symbols": list(demo.DEMO_SYMBOLS),
                             "adjusted": True}  # fmt: skip
    with resources.as_file(resources.files("feeds") / "data" / SAMPLE_FILE) as packaged:
        assert record.inputs == {SAMPLE_FILE: file_sha256(packaged)}
    assert record.metrics == {f"rows_{s}": len(frames[s]) for s in demo.DEMO_SYMBOLS}
    assert [p.name for p in out.files] == [f"{s}.parquet" for s in demo.DEMO_SYMBOLS]
    assert all(p.exists() for p in out.files) and len(lines) == 1 + len(demo.DEMO_SYMBOLS)


def test_the_synthetic_market_records_its_generator_config(tmp_path: Path) -> None:
    out = demo.DemoResult(store=tmp_path)
    demo._store_market(ParquetStore(tmp_path), True, out, lambda _: None)
    with RunRegistry(tmp_path) as registry:
        record = registry.get(out.runs[0][1])
    assert record.params == {"source": "synthetic", **demo.SYNTHETIC.to_dict()}
    assert record.params["seed"] == 7 and record.inputs == {}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_btml_demo_records_import_train_and_backtest_and_prints_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole demo, offline (synthetic market, one epoch): TorchServe is started and
    stopped, and every step it recorded is listed with its folder."""
    monkeypatch.setattr(demo, "DEMO_EPOCHS", 1)
    store = tmp_path / "store"
    res = CliRunner().invoke(main, ["--store", str(store), "demo", "--synthetic"])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "(its sha256 pinned in the model card)" in text and ".sha256" not in text
    head = "strategy             final value     CAGR  Sharpe   max DD  trades"
    assert head in text and "ml demo:1" in text and "buy-and-hold" in text
    # the layout: table, "store:", its files, the runs, "done in"
    tail = text[text.index(f"store: {store.resolve()}") :].splitlines()
    runs_at = tail.index("runs (btml runs show ID):")
    files = [Path(x.strip()) for x in tail[1:runs_at]]
    assert files and all(f.exists() for f in files)
    listed = [re.fullmatch(r"  (\w+) +(\S+)  (\S+)", x) for x in tail[runs_at + 1 : -1]]
    assert all(listed) and re.fullmatch(r"done in [\d.]+ s", tail[-1])
    runs = {m.group(1): (m.group(2), Path(m.group(3))) for m in listed if m}
    assert list(runs) == ["import", "train", "backtest"]
    with RunRegistry(store) as registry:
        for kind, (run_id, folder) in runs.items():
            record = registry.get(run_id)
            assert (record.kind, record.status, record.dir) == (kind, "ok", folder)
        backtest = registry.get(runs["backtest"][0])
        assert backtest.parents == (runs["train"][0],)
        assert backtest.params["serving"] == "torchserve" and backtest.n_trials == 3
    sheet = runs["backtest"][1] / "tearsheet.html"
    assert sheet in files and "btml-ml" in sheet.read_text()
    assert json.loads((runs["backtest"][1] / "summary.json").read_text())["model_card"]
    assert len(pd.read_parquet(runs["backtest"][1] / "returns.parquet").columns) == 3
    assert read_state(ServerConfig(home=store / "serving")) is None  # the server was stopped
