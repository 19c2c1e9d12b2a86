"""Analyzers against QuantStats, signal quality, the tearsheet, and btml backtest / tearsheet."""

from __future__ import annotations

import math
import re

import lxml.html
import numpy as np
import pandas as pd
import pytest
import quantstats as qs
from click.testing import CliRunner

from analyzers.backtest import BacktestResult, CostConfig, run_backtest
from analyzers.metrics import max_drawdown, performance
from analyzers.performance import (
    ClosedTrades,
    ExposureTurnover,
    TradeStats,
    calmar,
    drawdown_days,
    drawdown_duration,
    run_statistics,
    trade_stats,
)
from analyzers.signal_quality import SignalQualityAnalyzer, signal_quality
from analyzers.tearsheet import write_tearsheet
from btml.cli import main
from core.errors import DataError
from feeds.sample import load_sample
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig
from strategies.baselines import SmaCross, SmaCrossConfig
from workflows.reports import tearsheet_for_run, write_results


def returns(seed: int = 0, n: int = 756) -> pd.Series:
    idx = pd.bdate_range("2015-01-02", periods=n)
    return pd.Series(np.random.default_rng(seed).normal(4e-4, 0.012, n), index=idx)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_common_metrics_match_quantstats(seed) -> None:
    r = returns(seed)
    p = performance(r)
    assert p.sharpe == pytest.approx(qs.stats.sharpe(r), rel=1e-9)
    # QuantStats' Sortino uses sqrt(sum(min(r,0)^2) / n), as ours does.
    assert p.sortino == pytest.approx(qs.stats.sortino(r), rel=1e-9)
    # QuantStats' drawdown starts from the first close; ours from the starting equity of 1.
    # With a first return >= 0 the two agree exactly.
    r0 = r.copy()
    r0.iloc[0] = abs(r0.iloc[0])
    assert max_drawdown(r0) == pytest.approx(qs.stats.max_drawdown(r0), rel=1e-9)
    # CAGR: both compound over count / periods years; QuantStats' default periods is 365.
    assert p.cagr == pytest.approx(qs.stats.cagr(r, periods=252), rel=1e-9)
    assert p.cagr == pytest.approx(float((1 + r).prod()) ** (252 / len(r)) - 1, rel=1e-12)
    assert calmar(r0) == pytest.approx(p.cagr / abs(max_drawdown(r0)), rel=1e-12)
    pnls = r.to_numpy()
    ts = trade_stats(pnls)
    assert ts.win_rate == pytest.approx(qs.stats.win_rate(r), rel=1e-9)
    assert ts.profit_factor == pytest.approx(qs.stats.profit_factor(r), rel=1e-9)


def test_golden_equity() -> None:
    # equity 1 -> 1.1 -> 0.99 -> 0.891 -> 1.0692 -> 1.17612: one drawdown of 3 periods, -19 %
    r = pd.Series([0.1, -0.1, -0.1, 0.2, 0.1], index=pd.bdate_range("2020-01-01", periods=5))
    assert max_drawdown(r) == pytest.approx(0.891 / 1.1 - 1)
    assert drawdown_duration(r) == 3
    st = run_statistics(r)
    assert st["total_return"] == pytest.approx(0.17612)
    assert st["max_drawdown_duration"] == 3
    # the drawdown's bars are Thu 2 Jan, Fri 3 Jan and Mon 6 Jan 2020: 5 calendar days
    assert drawdown_days(r) == 5 and st["max_drawdown_days"] == 5
    # gains 10 + 20, losses 5 + 5: win rate 1/2, profit factor 30 / 10, average 20 / 4
    assert trade_stats([10, -5, 20, -5]) == TradeStats(
        trades=4, win_rate=0.5, profit_factor=3.0, average=5.0, best=20.0, worst=-5.0
    )
    assert trade_stats([]) == TradeStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert math.isinf(trade_stats([1.0]).profit_factor)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drawdown_days_match_quantstats(seed) -> None:
    r = returns(seed)
    r.iloc[0] = abs(r.iloc[0])  # QuantStats' drawdowns start from the first close
    details = qs.stats.drawdown_details(qs.stats.to_drawdown_series(r))
    assert drawdown_days(r) == int(details["days"].max()) > drawdown_duration(r)
    assert drawdown_days(pd.Series([0.01, 0.02], index=r.index[:2])) == 0


def test_exposure_and_trade_analyzers_in_a_real_run() -> None:
    s = load_sample(adjusted=True)
    frames = {k: s[k].loc["2010":"2012"] for k in ("AAPL", "IBM")}
    res = run_backtest(
        "sma", frames, SmaCross, costs=CostConfig(),
        strategy_kwargs={"config": SmaCrossConfig(target_percent=0.45)},
        analyzers={"exposure": (ExposureTurnover, {}), "closed": (ClosedTrades, {})},
    )  # fmt: skip
    ex = res.strategy.analyzers.exposure.get_analysis()
    tr = res.strategy.analyzers.closed.get_analysis()
    assert 0 < ex["time_in_market"] < 1 and 0 < ex["avg_gross"] <= 0.95
    assert ex["exposure"].max() <= 0.95 and ex["turnover"] > 0
    assert tr["trades"] == res.stats.round_trips and len(tr["pnls"]) == tr["trades"]
    assert res.stats.exposure == pytest.approx(ex["time_in_market"])
    assert tr["win_rate"] == pytest.approx(np.mean(np.array(tr["pnls"]) > 0))


def decisions(n: int = 200, skill: float = 1.0) -> pd.DataFrame:
    """A random walk and signals that predict its next move with ``skill`` (1 = always)."""
    rng = np.random.default_rng(3)
    steps = rng.normal(0, 0.01, n + 30)
    price = 100 * np.exp(np.cumsum(steps))
    rows = []
    for i in range(n):
        fwd = {h: np.log(price[i + h] / price[i]) for h in (1, 4, 24)}
        guess = {h: fwd[h] if rng.random() < skill else -fwd[h] for h in fwd}
        up = guess[4] > 0
        rows.append(
            dict(timestamp=pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(days=i), symbol="X",
                 price=price[i], position=0.0, target=0.1 if up else 0.0, reason="signal",
                 ret_1=guess[1], ret_4=guess[4], ret_24=guess[24], p_down=0.2 if up else 0.6,
                 p_flat=0.2, p_up=0.6 if up else 0.2, confidence=0.9 if up else 0.3)
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_signal_quality_of_a_perfect_and_a_contrary_signal() -> None:
    good = signal_quality(decisions(skill=1.0))
    bad = signal_quality(decisions(skill=0.0))
    assert (good.by_horizon["hit_rate"] == 1.0).all() and (good.by_horizon["ic"] > 0.99).all()
    assert (bad.by_horizon["hit_rate"] == 0.0).all() and (bad.by_horizon["ic"] < -0.99).all()
    # horizons running past the end are left out: 200 decisions, 30 extra bars of price
    assert list(good.by_horizon["n"]) == [200 - 1, 200 - 4, 200 - 24]
    assert good.pnl_by_confidence["mean_log_return"].iloc[-1] > 0
    assert len(good.calibration) == 2  # buckets 0.2-0.4 and 0.8-1.0


def test_signal_quality_analyzer_needs_an_audit_trail() -> None:
    s = load_sample(adjusted=True)
    with pytest.raises(TypeError, match="keeps no audit trail"):
        run_backtest(
            "sma", {"AAPL": s["AAPL"].loc["2011"]}, SmaCross,
            strategy_kwargs={"config": SmaCrossConfig()},
            analyzers={"sq": (SignalQualityAnalyzer, {})},
        )  # fmt: skip


def _ml_section(page: str) -> lxml.html.HtmlElement:
    """Our section of a tearsheet, checked to sit outside QuantStats' floating columns."""
    doc = lxml.html.fromstring(page)
    section = doc.get_element_by_id("btml-ml")
    assert not {a.get("id") for a in section.iterancestors()} & {"left", "right"}
    style = "".join(s.text_content() for s in doc.iter("style"))
    assert re.search(r"#btml-ml\{[^}]*clear:both", style)  # below both floats, no overlap
    return section


CARD = {
    "name": "m", "version": 2, "arch": "tiny", "parameters": 87261, "horizons": [1, 4, 24],
    "date_ranges": {"train": ["2004-01-02T00:00:00+00:00", "2010-05-03T00:00:00+00:00"],
                    "test": ["2011-01-03T00:00:00+00:00", "2013-01-25T00:00:00+00:00"]},
    "metrics": {"test": {"direction_accuracy": 0.5123, "price_1_ic": 0.0312, "n": 1359.0}},
}  # fmt: skip


def test_tearsheet_is_one_html_file_with_a_readable_ml_section(tmp_path) -> None:
    q = signal_quality(decisions())
    runs = pd.DataFrame(
        {"ml": run_statistics(returns(0)), "buy-and-hold": run_statistics(returns(1))}
    ).T
    out = write_tearsheet(
        returns(0), returns(1), tmp_path / "t.html", title="ml vs bh", signal_quality=q,
        model_card=CARD, runs=runs,
    )  # fmt: skip
    page = out.read_text()
    assert "Sharpe" in page and "Max Drawdown" in page  # QuantStats' own report
    assert page.index("btml-ml") > page.index("Sharpe")  # our section follows it
    section = _ml_section(page)
    text = " ".join(t.text_content() for t in section.iter("table", "h2", "h3"))
    assert [h.text_content() for h in section.iter("h2", "h3")][:3] == [
        "Model and signal quality (backtrader-ml)",
        "Runs at the same costs",
        "Hit rate and information coefficient by horizon",
    ]
    # every number formatted: no pandas or dict reprs, no raw floats or intervals
    for raw in ("{", "}", "[", "]", "nan", "NaN", "dtype", "Timestamp", "(0.8, 1.0]", "0.1234"):
        assert raw not in text, raw
    cells = {tuple(c.text_content() for c in tr) for tr in section.iter("tr")}
    stats = run_statistics(returns(0))
    row = next(c for c in cells if c[0] == "ml")
    assert row[1] == f"{stats['total_return']:.2%}" and row[5] == f"{stats['max_drawdown']:.2%}"
    assert row[6] == f"{drawdown_days(returns(0))} days" and row[3] == f"{stats['sharpe']:.2f}"
    assert ("1 bar", "199", "100.00%", "1.000") in cells  # a perfect signal: hit rate 100 %
    confident = int((decisions()["confidence"] == 0.9).iloc[: 200 - 4].sum())
    assert ("80-100%", f"{confident:,}", "90.00%", "100.00%") in cells  # calibration row
    pnl = q.pnl_by_confidence.iloc[-1]
    assert ("80-100%", f"{int(pnl['n']):,}", f"{pnl['mean_log_return'] * 1e4:,.1f} bps") in cells
    assert ("date ranges", "train: 2004-01-02 to 2010-05-03test: 2011-01-03 to 2013-01-25") in cells
    assert ("test direction_accuracy", "51.23%") in cells and ("test n", "1,359") in cells
    assert ("parameters", "87,261") in cells and ("horizons", "1, 4, 24 bars") in cells
    # charts: inline SVG at their own size (QuantStats' CSS would stretch them), no PNG
    svgs = list(section.iter("svg"))
    assert len(svgs) == 2 and not list(section.iter("img"))
    for svg in svgs:
        assert re.fullmatch(r"width:[\d.]+pt;height:[\d.]+pt;max-width:100%", svg.get("style"))
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)


def test_tearsheet_edge_cases(tmp_path) -> None:
    alone = write_tearsheet(returns(0), None, tmp_path / "alone.html").read_text()
    assert "Sharpe" in alone and "Benchmark" not in alone
    _ml_section(alone)
    flat = pd.Series(0.0, index=returns(0).index)
    page = write_tearsheet(flat, returns(1), tmp_path / "flat.html").read_text()
    assert "never traded" in page or "Sharpe" in page
    with pytest.raises(DataError, match="fewer than 2 returns"):
        write_tearsheet(returns(0).iloc[:1], None, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_tearsheet_of_a_run_with_a_given_benchmark(tmp_path) -> None:
    """A run with one strategy (walk-forward's stitched returns) gets buy-and-hold from the
    caller: QuantStats compares against it and the runs table lists it."""
    ours = returns(0)
    stats = performance(ours)
    write_results(tmp_path / "run", [BacktestResult("walk-forward x", ours, 1.0, stats)], None)
    plain = tearsheet_for_run(tmp_path / "run", tmp_path / "plain.html").read_text()
    assert "walk-forward x vs no benchmark" in plain and "Benchmark" not in plain
    bench = returns(1)
    page = tearsheet_for_run(tmp_path / "run", tmp_path / "b.html", benchmark=bench).read_text()
    assert "walk-forward x vs buy-and-hold" in page and "Benchmark" in page
    rows = {tr[0].text_content(): tr for tr in _ml_section(page).iter("tr")}
    assert rows["buy-and-hold"][1].text_content() == f"{performance(bench).total_return:.2%}"
    with pytest.raises(DataError, match="benchmark has fewer than 2 returns"):
        tearsheet_for_run(tmp_path / "run", tmp_path / "c.html", benchmark=bench.iloc[:1])


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bt")
    store = ParquetStore(root)
    s = load_sample(adjusted=True)
    for sym in ("AAPL", "IBM"):
        store.write(s[sym].loc["2004":], merge=False)
    frames = {sym: store.read(sym, "1Day") for sym in ("AAPL", "IBM")}
    train_model(
        frames, "tiny", name="m", registry=ModelRegistry(root / "models"),
        train_cfg=TrainConfig(epochs=2, batch_size=128, max_batches=5),
        data_cfg=DatasetConfig(window=16), work_dir=root / "train-work",
    )  # fmt: skip
    return root


def test_backtest_cli_model_and_tearsheet(trained_store) -> None:
    runner = CliRunner()
    base = ["--store", str(trained_store)]
    res = runner.invoke(main, [*base, "backtest", "--model", "m:1", "--symbols", "AAPL,IBM",
                               "--tearsheet", str(trained_store / "t.html")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        "(test range)" in res.output and "buy-and-hold" in res.output and "sma-cross" in res.output
    )
    card = ModelRegistry(trained_store / "models").card("m:1")
    assert f"from {card.date_ranges['test'][0][:10]}" in res.output
    run_id = re.search(r"^recorded as run (\S+) in (\S+)$", res.output, re.M)
    assert run_id is not None
    run_dir = trained_store / "runs" / run_id.group(1)
    assert run_id.group(2) == str(run_dir) and (run_dir / "audit.parquet").exists()
    assert "btml-ml" in (trained_store / "t.html").read_text()
    res = runner.invoke(
        main, [*base, "tearsheet", run_id.group(1), "--out", str(trained_store / "u.html")]
    )
    assert res.exit_code == 0 and (trained_store / "u.html").exists()
    res = runner.invoke(main, [*base, "backtest", "--baseline", "sma", "--symbols", "AAPL"])
    assert res.exit_code == 0 and "sma-cross" in res.output


def test_backtest_cli_refuses_bad_requests(trained_store) -> None:
    runner = CliRunner()
    base = ["--store", str(trained_store), "backtest", "--symbols", "AAPL"]
    res = runner.invoke(main, [*base, "--model", "m:1", "--start", "2006-01-01"])
    assert res.exit_code == 2 and "inside m:1's training range" in res.output
    res = runner.invoke(main, [*base, "--baseline", "sma", "--start", "2030-01-01"])
    assert res.exit_code == 2 and "no bars between 2030-01-01" in res.output
    res = runner.invoke(main, [*base, "--model", "nope"])
    assert res.exit_code == 2 and "no model called 'nope'" in res.output
    res = runner.invoke(main, [*base])
    assert res.exit_code == 2 and "exactly one of --model or --baseline" in res.output
    res = runner.invoke(
        main, ["--store", str(trained_store), "tearsheet", "none", "--out", "x.html"]
    )
    assert res.exit_code == 2 and "no run 'none'" in res.output
