"""Output conventions: ``--json`` on list commands (parsed back), daily bars printed as dates."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner, Result

from btml.cli import main
from btml.output import stamp

CLOSE_ONLY = Path(__file__).parent / "fixtures" / "import" / "close_only.csv"


def btml(store: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(store), *args])


def test_data_and_index_list_as_json_and_as_dates(tmp_path: Path) -> None:
    store = tmp_path / "s"
    assert btml(store, "data", "import", str(CLOSE_ONLY), "--symbol", "X").exit_code == 0
    assert btml(store, "data", "import", str(CLOSE_ONLY), "--symbol", "Y").exit_code == 0
    res = btml(store, "index", "build", "XY", "--constituents", "X,Y")
    assert res.exit_code == 0, res.output
    listed = json.loads(btml(store, "data", "list", "--json").stdout)
    assert [(r["symbol"], r["asset_class"]) for r in listed] == [
        ("XY", "index"),
        ("X", "stocks"),
        ("Y", "stocks"),
    ]
    assert listed[1]["first"] == "2011-01-03" and listed[1]["rows"] == 543
    indices = json.loads(btml(store, "index", "list", "--json").stdout)
    assert [r["symbol"] for r in indices] == ["XY"]
    text = btml(store, "index", "list").stdout
    assert "2011-01-03 .. 2013-03-01" in text and "00:00:00" not in text


def test_features_list_as_json(tmp_path: Path) -> None:
    rows = json.loads(btml(tmp_path, "features", "list", "--json").stdout)
    assert len(rows) >= 50 and {"name", "family", "window", "formula"} <= set(rows[0])


def test_stamp_prints_daily_bars_as_dates_and_intraday_as_times() -> None:
    assert stamp(pd.Timestamp("2024-01-02", tz="UTC")) == "2024-01-02"
    assert stamp(pd.Timestamp("2024-01-02 14:30", tz="UTC"), "1h") == "2024-01-02T14:30:00+00:00"
    assert stamp(None) == "-"
