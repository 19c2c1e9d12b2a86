"""The index builder: methods, continuity, point-in-time membership, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError, DataError
from feeds.index import IndexConfig, build_from_store, build_index, read_membership
from feeds.sample import load_sample
from feeds.store import ParquetStore
from feeds.validate import validate


def _frame(closes: list[float], start: str = "2021-01-04", symbol: str = "X") -> pd.DataFrame:
    idx = pd.bdate_range(start, periods=len(closes), tz="UTC", name="datetime")
    c = np.asarray(closes, dtype=float)
    f = pd.DataFrame(
        {"open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 100.0}, index=idx
    )
    f.attrs = {"symbol": symbol, "timeframe": "1Day", "source": "test", "asset_class": "stocks"}
    return f


@pytest.fixture(scope="module")
def sample() -> dict[str, pd.DataFrame]:
    return load_sample(adjusted=True)


def test_price_weighted_equals_sum_of_prices_over_divisor() -> None:
    a, b = _frame([10, 11, 12, 11, 13], symbol="A"), _frame([100, 98, 99, 103, 101], symbol="B")
    res = build_index(
        {"A": a, "B": b}, IndexConfig(name="P", method="price", constituents=("A", "B"))
    )
    total = a["close"] + b["close"]
    expected = 1000.0 * total / total.iloc[0]  # constant divisor while membership is unchanged
    np.testing.assert_allclose(res.frame["close"].to_numpy(), expected.to_numpy(), rtol=1e-12)


def test_equal_weight_rebalances_monthly_and_drifts_between() -> None:
    n = 45
    a = _frame(list(100 * 1.01 ** np.arange(n)), symbol="A")
    b = _frame([100.0] * n, symbol="B")
    res = build_index(
        {"A": a, "B": b},
        IndexConfig(name="E", method="equal", constituents=("A", "B"), rebalance="M"),
    )
    w = res.weights
    month_starts = [i for i in range(2, n) if w.index[i].month != w.index[i - 1].month]
    assert month_starts, "the range spans a month boundary"
    for i in month_starts:
        np.testing.assert_allclose(w.iloc[i].to_numpy(), [0.5, 0.5])
    assert w["A"].iloc[month_starts[0] - 1] > 0.5  # drifted up with A's rise before rebalancing


def test_fixed_weights_are_normalised_with_a_note() -> None:
    a, b = _frame([10, 11, 12], symbol="A"), _frame([10, 10, 10], symbol="B")
    res = build_index(
        {"A": a, "B": b},
        IndexConfig(
            name="F", method="fixed", constituents=("A", "B"), weights={"A": 3.0, "B": 1.0}
        ),
    )
    assert any("summed to 4" in n for n in res.notes)
    np.testing.assert_allclose(res.weights.iloc[1].to_numpy(), [0.75, 0.25])
    assert res.frame["close"].iloc[1] == pytest.approx(1000 * (1 + 0.75 * 0.1))


def test_level_is_continuous_across_a_membership_change() -> None:
    a = _frame([10.0] * 10, symbol="A")
    b = _frame([500.0] * 10, symbol="B")
    membership = pd.DataFrame(
        {"date": pd.to_datetime(["2021-01-04", "2021-01-08"], utc=True), "symbol": ["A", "B"]}
    )
    res = build_index(
        {"A": a, "B": b}, IndexConfig(name="M", method="price", membership=membership)
    )
    # prices never move, so the level must not move either, whoever is in the index
    np.testing.assert_allclose(res.frame["close"].to_numpy(), 1000.0)
    assert res.weights["B"].iloc[-1] == 1.0 and res.weights["A"].iloc[-1] == 0.0


def test_split_does_not_move_the_level() -> None:
    a = _frame([100, 100, 50, 50], symbol="A")
    a["stock_splits"] = [0.0, 0.0, 2.0, 0.0]
    res = build_index({"A": a}, IndexConfig(name="S", method="price", constituents=("A",)))
    np.testing.assert_allclose(res.frame["close"].to_numpy(), 1000.0)


def test_delisted_member_keeps_history_without_survivorship(
    sample: dict[str, pd.DataFrame],
) -> None:
    dead = sample["IBM"].loc[:"2005-12-31"]  # a name that disappears
    frames = {"AAPL": sample["AAPL"], "IBM": dead}
    res = build_index(
        frames, IndexConfig(name="D", method="equal", constituents=("AAPL", "IBM"), rebalance="Q")
    )
    assert res.weights.loc["2004-06-01":"2005-06-01", "IBM"].gt(0).all()
    assert res.weights.loc["2006-02-01":, "IBM"].eq(0).all()
    validate(res.frame, "D")


def test_ohlc_consistent_and_volume_summed(sample: dict[str, pd.DataFrame]) -> None:
    syms = ("AAPL", "IBM", "MSFT")
    res = build_index(
        sample, IndexConfig(name="T", method="equal", constituents=syms, rebalance="M")
    )
    f = res.frame
    validate(f, "T")  # low <= open, close <= high, positive, increasing
    vol = sum(sample[s]["volume"] for s in syms)
    np.testing.assert_allclose(f["volume"].to_numpy(), vol.reindex(f.index).to_numpy())
    assert f.attrs["asset_class"] == "index"


def test_missing_bars_carried_within_limit_then_error() -> None:
    a = _frame([10.0 + i for i in range(20)], symbol="A")
    b = _frame([20.0 + i for i in range(20)], symbol="B").drop(index=_frame([0] * 20).index[5:8])
    res = build_index(
        {"A": a, "B": b},
        IndexConfig(name="C", method="equal", constituents=("A", "B"), carry_limit=3),
    )
    assert len(res.frame) == 20
    with pytest.raises(
        DataError, match=r"constituent B has no bars from 2021-01-11 to 2021-01-13 \(3 bars"
    ):
        build_index(
            {"A": a, "B": b},
            IndexConfig(
                name="C",
                method="equal",
                membership=pd.DataFrame({"date": [a.index[0], a.index[0]], "symbol": ["A", "B"]}),
                carry_limit=2,
            ),
        )


def test_membership_file_with_unknown_symbol_is_refused(tmp_path, sample) -> None:
    store = ParquetStore(tmp_path / "store")
    for s in ("AAPL", "IBM"):
        store.write(sample[s])
    mfile = tmp_path / "members.csv"
    mfile.write_text("date,symbol,weight\n2004-01-02,AAPL,0.5\n2004-01-02,NOPE,0.5\n")
    cfg = IndexConfig(name="BAD", method="fixed", membership=read_membership(str(mfile)))
    with pytest.raises(DataError, match="NOPE not in the store"):
        build_from_store(store, cfg)
    assert not (tmp_path / "store" / "raw" / "index").exists()  # nothing written


def test_build_from_store_round_trips_as_a_feed(tmp_path, sample) -> None:
    import backtrader as bt

    from feeds.btfeeds import StoreData

    store = ParquetStore(tmp_path / "store")
    for s in ("AAPL", "MSFT"):
        store.write(sample[s])
    res, path = build_from_store(
        store, IndexConfig(name="DUO", method="price", constituents=("AAPL", "MSFT"))
    )
    assert path.parts[-3:] == ("index", "1Day", "DUO.parquet")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(StoreData.from_store(store, "DUO"))
    cerebro.addstrategy(bt.Strategy)
    strat = cerebro.run()[0]
    assert len(strat.data) == len(res.frame)
    assert strat.data.close[0] == pytest.approx(res.frame["close"].iloc[-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "nope", "constituents": ("A",)}, "method must be one of"),
        ({"constituents": ()}, "either constituents or a membership"),
        ({"method": "fixed", "constituents": ("A",)}, "needs weights"),
        ({"constituents": ("A",), "rebalance": "W"}, "rebalance must be M"),
        ({"constituents": ("A",), "weights": {"A": -1.0}}, "weights must be >= 0"),
    ],
)
def test_bad_config_is_refused(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        IndexConfig(name="X", **kwargs)


def test_weights_naming_a_non_member_are_refused() -> None:
    a = _frame([10, 11, 12], symbol="A")
    with pytest.raises(DataError, match="not in the index: Z"):
        build_index(
            {"A": a},
            IndexConfig(name="F", method="fixed", constituents=("A",), weights={"A": 1, "Z": 1}),
        )


def test_index_cli_build_list_and_errors(tmp_path, sample) -> None:
    from click.testing import CliRunner

    from btml.cli import main

    store = ParquetStore(tmp_path / "s")
    for s in ("AAPL", "IBM", "MSFT"):
        store.write(sample[s])
    weights = tmp_path / "w.csv"
    weights.write_text("symbol,weight\nAAPL,0.5\nIBM,0.3\nMSFT,0.3\n")
    run = CliRunner().invoke
    base = ["--store", str(tmp_path / "s"), "index"]
    res = run(
        main,
        [
            *base,
            "build",
            "TRIO",
            "--method",
            "fixed",
            "--constituents",
            "AAPL,IBM,MSFT",
            "--weights",
            str(weights),
            "--rebalance",
            "M",
            "--start",
            "2005-01-01",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "note: weights summed to 1.1" in res.output and "2005-01-03" in res.output
    assert "TRIO" in run(main, [*base, "list"]).output
    bad = run(main, [*base, "build", "X", "--constituents", "AAPL,ZZZZ"])
    assert bad.exit_code == 2 and "ZZZZ not in the store" in bad.output
    assert run(main, [*base, "build", "--help"]).exit_code == 0
