"""Survivorship: a named universe is today's constituents, and every report over one says so;
a point-in-time membership file removes the warning and trades each symbol only while it was
a member (real backtrader runs, a real index build, real files and a real run registry)."""

from __future__ import annotations

import json
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from analyzers.backtest import CostConfig, run_backtest
from btml.cli import main
from core.errors import ConfigError, DataError
from feeds.index import IndexConfig, build_index
from feeds.membership import Membership, MemberSpan, load_membership, read_spans
from feeds.store import ParquetStore
from feeds.universes import UNIVERSES, survivorship_warning
from serving.replay import ReplayClient
from strategies.baselines import BuyAndHold, SmaCross
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.sizing import FixedFraction
from strategies.windows import FeatureWindows
from tests.conftest import ohlcv_frame
from workflows.backtest import BacktestConfig
from workflows.runs import RunRegistry

SMALL = UNIVERSES["small"]
WARNING = "survivorship: small is today's constituents, not point-in-time; give --membership FILE"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The ``small`` universe's ten symbols as synthetic daily bars, and DELISTED: a name that
    left (not in today's list)."""
    root = tmp_path_factory.mktemp("universe-store")
    st = ParquetStore(root)
    for k, sym in enumerate((*SMALL, "DELISTED")):
        st.write(ohlcv_frame(300, symbol=sym, seed=k, start="2020-01-01"))
    return root


def cli(store: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["--store", str(store), *args])
    return res.exit_code, res.output


def metrics(store: Path, output: str) -> dict:
    rid = output.split("recorded as run ")[1].split()[0]
    return json.loads((store / "runs" / rid / "metrics.json").read_text())


def test_the_warning_is_the_one_line_the_issue_asks_for() -> None:
    assert survivorship_warning("small") == WARNING


def test_a_universe_backtest_warns_in_the_summary_metrics_and_tearsheet(
    store: Path, tmp_path: Path
) -> None:
    sheet = tmp_path / "t.html"
    code, out = cli(store, "backtest", "--baseline", "buyhold", "--universe", "small",
                    "--tearsheet", str(sheet))  # fmt: skip
    assert code == 0, out
    summary = out[out.index("final value") :]
    assert f"warning: {WARNING}" in summary  # under the results table
    m = metrics(store, out)
    assert m["warnings"] == [WARNING]
    rid = out.split("recorded as run ")[1].split()[0]
    with RunRegistry(store) as registry:
        rec = registry.get(rid)
    assert rec.params["universe"] == "small" and tuple(rec.params["symbols"]) == SMALL
    assert json.loads((store / "runs" / rid / "summary.json").read_text())["warnings"] == [WARNING]
    page = sheet.read_text()
    assert "survivorship-biased universe" in page and "today&#x27;s constituents" in page


def test_symbols_given_by_name_carry_no_warning(store: Path) -> None:
    code, out = cli(store, "backtest", "--baseline", "buyhold", "--symbols", "AAPL,MSFT")
    assert code == 0, out
    assert "survivorship" not in out and "warnings" not in metrics(store, out)


def test_a_membership_file_removes_the_warning_and_adds_the_leavers(
    store: Path, tmp_path: Path
) -> None:
    days = ohlcv_frame(300, start="2020-01-01").index
    members = tmp_path / "members.csv"
    rows = [f"{s},2019-01-01," for s in SMALL[1:]]
    rows += [f"AAPL,{days[150].date()},", f"DELISTED,2019-01-01,{days[150].date()}"]
    members.write_text("symbol,start,end\n" + "\n".join(rows) + "\n")
    code, out = cli(store, "backtest", "--baseline", "buyhold", "--universe", "small",
                    "--membership", str(members))  # fmt: skip
    assert code == 0, out
    assert "survivorship" not in out and "warnings" not in metrics(store, out)
    rid = out.split("recorded as run ")[1].split()[0]
    with RunRegistry(store) as registry:
        params = registry.get(rid).params
    assert "DELISTED" in params["symbols"] and len(params["symbols"]) == 11
    assert params["membership"][-1] == {"symbol": "DELISTED", "start": "2019-01-01T00:00:00+00:00",
                                        "end": f"{days[150].date()}T00:00:00+00:00"}  # fmt: skip
    again = BacktestConfig.from_dict(params)  # the recorded request builds back
    assert again.symbols == tuple(params["symbols"]) and again.warnings() == []


def positions(result) -> pd.DataFrame:
    """Each data's position value per bar (backtrader's PositionsValue analyzer)."""
    got = result.strategy.analyzers.pos.get_analysis()
    names = [d._name for d in result.strategy.datas]
    out = pd.DataFrame.from_dict(got, orient="index", columns=names)
    out.index = pd.DatetimeIndex(out.index).tz_localize("UTC")  # backtrader's clock is UTC
    return out


@pytest.mark.parametrize("strategy", [BuyAndHold, SmaCross])
def test_membership_over_time_changes_which_symbols_are_held(strategy) -> None:
    """A leaves at bar 100, B joins then: no position in B before, none in A after (closed at
    the next open), in every engine mode; without membership both are held."""
    frames = {s: ohlcv_frame(200, symbol=s, seed=k) for k, s in enumerate("AB")}
    cut = frames["A"].index[100]
    members = Membership([MemberSpan(symbol="A", start="2019-01-01", end=cut.isoformat()),
                          MemberSpan(symbol="B", start=cut.isoformat())])  # fmt: skip
    runs = [
        run_backtest(
            "x",
            frames,
            strategy,
            membership=members,
            runonce=ro,
            preload=pl,
            analyzers={"pos": (bt.analyzers.PositionsValue, {})},
        )  # fmt: skip
        for ro, pl in ((True, True), (False, True), (False, False))
    ]
    pos = positions(runs[0])
    when = pos.index
    assert (pos.loc[when < cut, "B"] == 0).all()
    assert (pos.loc[when > cut, "A"] == 0).all()
    assert runs[0].strategy.broker.forced_closes in ([], [("A", cut)])
    if strategy is BuyAndHold:
        assert (pos.loc[when < cut, "A"] > 0).iloc[1:].all()  # held while a member
        assert runs[0].strategy.broker.forced_closes == [("A", cut)]
    for other in runs[1:]:
        assert other.final_value == pytest.approx(runs[0].final_value, abs=1e-6)
    free = positions(
        run_backtest("x", frames, strategy, analyzers={"pos": (bt.analyzers.PositionsValue, {})})
    )
    if strategy is BuyAndHold:  # without membership B is held before it joined, A after it left
        assert (free.loc[free.index < cut, "B"] > 0).iloc[1:].all()
        assert (free.loc[free.index > cut, "A"] > 0).all()
    assert not free.equals(pos)


def test_the_ml_strategy_asks_and_decides_for_members_only() -> None:
    frames = {s: ohlcv_frame(400, symbol=s, seed=k) for k, s in enumerate("AB")}
    names = ["ret_1", "ret_5", "rsi_14"]
    windows = FeatureWindows.build(frames, names, 8)
    rows = [dict(symbol=s, timestamp=t, ret_1=0.01, ret_4=0.01, ret_24=0.02, p_down=0.1,
                 p_flat=0.2, p_up=0.7, a_sell=0.1, a_hold=0.2, a_buy=0.7, size=1.0,
                 volatility=0.01, risk=0.02, confidence=0.9)
            for s, f in frames.items() for t in f.index]  # fmt: skip
    cut = frames["A"].index[300]
    members = Membership([MemberSpan(symbol="A", start="2019-01-01", end=cut.isoformat()),
                          MemberSpan(symbol="B", start=cut.isoformat())])  # fmt: skip
    cfg = MLSignalConfig(sizer=FixedFraction(fraction=0.2))
    res = run_backtest(
        "ml", frames, MLSignalStrategy, costs=CostConfig(), membership=members,
        strategy_kwargs={"config": cfg, "client": ReplayClient.from_frame(pd.DataFrame(rows)),
                         "windows": windows},
    )  # fmt: skip
    audit = pd.DataFrame([(d.symbol, d.timestamp) for d in res.strategy.audit], columns=["s", "t"])
    assert (audit.loc[audit.s == "A", "t"] < cut).all() and (audit.s == "A").any()
    assert (audit.loc[audit.s == "B", "t"] >= cut).all() and (audit.s == "B").any()
    assert res.strategy.broker.forced_closes == [("A", cut)]
    assert res.strategy.getposition(res.strategy.getdatabyname("A")).size == 0


def test_an_index_from_a_universe_warns_and_membership_spans_count_over_time(
    store: Path, tmp_path: Path
) -> None:
    code, out = cli(store, "index", "build", "TODAY", "--universe", "small")
    assert code == 0, out
    assert f"warning: {WARNING}" in out
    stored = ParquetStore(store).read("TODAY")
    assert stored.attrs["survivorship"] == WARNING and stored.attrs["universe"] == "small"

    days = ohlcv_frame(300, start="2020-01-01").index
    spans = tmp_path / "spans.csv"
    spans.write_text(f"symbol,start,end\nAAPL,2019-06-03,\nMSFT,2019-06-03,{days[100].date()}\n"
                     f"DELISTED,{days[100].date()},{days[200].date()}\n")  # fmt: skip
    code, out = cli(
        store, "index", "build", "PIT", "--universe", "small", "--membership", str(spans)
    )
    assert code == 0, out
    assert "survivorship" not in out and "survivorship" not in ParquetStore(store).read("PIT").attrs
    frames = {s: ParquetStore(store).read(s) for s in ("AAPL", "MSFT", "DELISTED")}
    w = build_index(
        frames, IndexConfig(name="PIT", method="equal", spans=read_spans(spans))
    ).weights
    # a member counts from its start (its return into that day) up to, not including, its end
    assert (w.loc[days[100] :, "MSFT"] == 0).all() and (w.loc[days[2] : days[99], "MSFT"] > 0).all()
    assert (w.loc[: days[99], "DELISTED"] == 0).all() and (
        w.loc[days[200] :, "DELISTED"] == 0
    ).all()
    assert (w.loc[days[100] : days[199], "DELISTED"] > 0).all()
    assert np.allclose(w.iloc[2:].sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("symbol,start,end\nAAPL,2020-01-01,\n,2020-01-01,\n", "line 3: no symbol"),
        ("symbol,start,end\nAAPL,,\n", "line 2: AAPL has no start date"),
        ("symbol,start,end\nAAPL,someday,\n", "line 2: start 'someday' is not a date (use YYYY-MM-DD)"),
        ("symbol,start,end\nAAPL,2021-01-01,2020-01-01\n",
         "line 2: AAPL ends 2020-01-01 on or before its start 2021-01-01"),
        ("symbol,start,end\nAAPL,2020-01-01,2021-01-01\nIBM,2020-01-01,\nAAPL,2020-06-01,\n",
         "line 4: AAPL from 2020-06-01 overlaps its span on line 2 (2020-01-01 to 2021-01-01); merge the two rows"),
        ("ticker,from\nAAPL,2020-01-01\n", "a membership file has the columns symbol,start,end"),
        ("date,symbol\n2020-01-01,AAPL\nsoon,IBM\n", "line 3: date 'soon' is not a date"),
    ],
)  # fmt: skip
def test_a_bad_membership_file_is_one_line_naming_the_row_and_nothing_is_stored(
    store: Path, tmp_path: Path, text: str, message: str
) -> None:
    bad = tmp_path / "members.csv"
    bad.write_text(text)
    with pytest.raises(DataError, match=f"^{bad}( line \\d+)?: .*"):
        load_membership(bad)
    before = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    code, out = cli(store, "backtest", "--baseline", "buyhold", "--membership", str(bad))
    assert code == 2 and out.startswith(f"error: {bad}") and message in out, out
    assert len(out.strip().splitlines()) == 1
    code, out = cli(store, "index", "build", "BAD", "--membership", str(bad))
    assert code == 2 and message in out and len(out.strip().splitlines()) == 1
    assert sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file()) == before


def test_universe_and_symbols_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="give --universe or --symbols, not both"):
        BacktestConfig(symbols=("AAPL",), universe="small", baseline="buyhold")
    with pytest.raises(ConfigError, match="unknown universe 'smal'.*did you mean 'small'"):
        BacktestConfig(universe="smal", baseline="buyhold")
    with pytest.raises(ConfigError, match="NOPE is never a member in the membership file"):
        BacktestConfig(symbols=("NOPE",), baseline="buyhold",
                       membership=(MemberSpan(symbol="AAPL", start="2020-01-01"),))  # fmt: skip


def test_a_universe_not_stored_names_the_missing_symbols_and_the_download(tmp_path: Path) -> None:
    st = ParquetStore(tmp_path / "s")
    st.write(ohlcv_frame(100, symbol="AAPL"))
    code, out = cli(tmp_path / "s", "backtest", "--baseline", "sma", "--universe", "small")
    assert code == 2
    assert out.strip() == (
        "error: 9 of universe small's 10 symbols are not in the store (1Day): MSFT, AMZN, "
        "GOOGL, META, NVDA ...; btml data download --universe small"
    )
    assert not (tmp_path / "s" / "runs").exists()


def test_a_backtest_without_symbols_names_the_three_ways_to_give_them(tmp_path: Path) -> None:
    code, out = cli(tmp_path / "s", "backtest", "--baseline", "sma")
    assert (code, out.strip()) == (
        2,
        "error: give --symbols A,B, --universe NAME or --membership FILE",
    )
    assert not (tmp_path / "s").exists()


def test_training_with_an_index_of_todays_constituents_warns_in_its_summary_and_metrics(
    tmp_path: Path,
) -> None:
    st = ParquetStore(tmp_path)
    for k, sym in enumerate(SMALL):  # enough history for the features' warm-up and the split
        st.write(ohlcv_frame(700, symbol=sym, seed=k, start="2018-01-01"))
    code, out = cli(tmp_path, "index", "build", "NOWIDX", "--universe", "small")
    assert code == 0, out
    code, out = cli(tmp_path, "train", "--symbols", "AAPL,MSFT", "--index", "NOWIDX",
                    "--name", "sv", "--epochs", "1", "--window", "8")  # fmt: skip
    assert code == 0, out
    warned = f"index NOWIDX: {WARNING}"
    summary = out[out.index("registered sv:1") :]
    assert f"warning: {warned}\nrecorded as run " in summary  # under the training's summary
    assert metrics(tmp_path, out)["warnings"] == [warned]
    # a backtest of the model (it reads the index) carries the same one line
    code, out = cli(tmp_path, "backtest", "--model", "sv:1", "--symbols", "AAPL,MSFT")
    assert code == 0, out
    assert metrics(tmp_path, out)["warnings"] == [warned] and f"warning: {warned}\n" in out
