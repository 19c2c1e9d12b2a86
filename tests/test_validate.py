"""The OHLCV frame contract: make_frame, validate's rules, repairs, gaps and split detection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import DataError, UserError, ValidationError
from feeds.calendars import sessions
from feeds.frame import OHLCV_COLUMNS, empty_frame, guess_asset_class, make_frame
from feeds.sample import SAMPLE_SYMBOLS, load_sample
from feeds.sources.csv_source import read_csv_frames
from feeds.validate import validate
from tests.conftest import FrameFactory

# ---------------------------------------------------------------------------- make_frame


def _raw(n: int = 3, tz: str | None = "UTC") -> pd.DataFrame:
    idx = pd.date_range("2021-03-01", periods=n, freq="D", tz=tz)
    return pd.DataFrame(
        {
            "Open": np.arange(n) + 10,
            "HIGH": np.arange(n) + 11,
            " low ": np.arange(n) + 9,
            "Close": np.arange(n) + 10.5,
            "Volume": np.arange(n) * 100,
            "Dividends": 0.0,
            "Junk": "x",
        },
        index=idx,
    )


def test_make_frame_builds_the_canonical_shape() -> None:
    f = make_frame(_raw(), symbol="abc", source="unit", timeframe="1Day")
    assert list(f.columns) == list(OHLCV_COLUMNS)
    assert all(f[c].dtype == np.float64 for c in f.columns)
    assert f.index.name == "datetime"
    assert str(f.index.dtype) == "datetime64[ns, UTC]"
    assert f["high"].tolist() == [11.0, 12.0, 13.0]
    assert f["volume"].tolist() == [0.0, 100.0, 200.0]
    assert f.attrs == {
        "symbol": "abc",
        "source": "unit",
        "timeframe": "1Day",
        "adjustment": "raw",
        "asset_class": "stocks",
    }


def test_make_frame_keeps_named_extra_columns_after_ohlcv() -> None:
    f = make_frame(_raw(), symbol="X", source="unit", timeframe="1Day", keep=("dividends",))
    assert list(f.columns) == [*OHLCV_COLUMNS, "dividends"]


def test_make_frame_refuses_naive_timestamps_without_a_zone() -> None:
    with pytest.raises(DataError, match=r"XYZ: timestamps have no timezone.*tz="):
        make_frame(_raw(tz=None), symbol="XYZ", source="unit", timeframe="1Day")


def test_make_frame_localises_naive_timestamps_in_the_given_zone() -> None:
    raw = _raw(tz=None)
    raw.index = pd.DatetimeIndex(["2021-03-01 09:30", "2021-03-01 10:30", "2021-03-15 09:30"])
    f = make_frame(raw, symbol="X", source="unit", timeframe="1h", tz="America/New_York")
    # 2021-03-14 is the US switch to daylight time: EST (-5) before, EDT (-4) after.
    assert list(f.index) == [
        pd.Timestamp("2021-03-01 14:30", tz="UTC"),
        pd.Timestamp("2021-03-01 15:30", tz="UTC"),
        pd.Timestamp("2021-03-15 13:30", tz="UTC"),
    ]


def test_make_frame_converts_other_zones_to_utc() -> None:
    raw = _raw(tz="Asia/Tokyo")
    f = make_frame(raw, symbol="X", source="unit", timeframe="1Day")
    assert str(f.index.tz) == "UTC"
    assert f.index[0] == pd.Timestamp("2021-02-28 15:00", tz="UTC")


def test_make_frame_names_missing_columns() -> None:
    raw = _raw().drop(columns=["HIGH", "Volume"])
    with pytest.raises(DataError, match=r"SYM: missing column\(s\) high, volume"):
        make_frame(raw, symbol="SYM", source="unit", timeframe="1Day")


def test_make_frame_refuses_a_non_timestamp_index() -> None:
    raw = _raw().reset_index(drop=True)
    with pytest.raises(DataError, match="index must be timestamps"):
        make_frame(raw, symbol="SYM", source="unit", timeframe="1Day")


@pytest.mark.parametrize(
    ("symbol", "asset_class"),
    [
        ("AAPL", "stocks"),
        ("BTC/USD", "crypto"),
        ("BTC-USD", "crypto"),
        ("BRK-B", "stocks"),
        ("4063.T", "stocks"),
    ],
)
def test_guess_asset_class(symbol: str, asset_class: str) -> None:
    assert guess_asset_class(symbol) == asset_class


def test_empty_frame_is_canonical_and_valid() -> None:
    f = empty_frame(symbol="E", timeframe="1Day")
    assert list(f.columns) == list(OHLCV_COLUMNS)
    assert str(f.index.dtype) == "datetime64[ns, UTC]"
    out, report = validate(f)
    assert report.rows == 0 and report.ok


# ------------------------------------------------------------------------- hard rules

Corrupt = Callable[[pd.DataFrame], tuple[pd.DataFrame, int]]


def _set(col: str, pos: int, value: float) -> Corrupt:
    def corrupt(f: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        f = f.copy()
        f.iloc[pos, f.columns.get_loc(col)] = value
        return f, pos

    return corrupt


def _high_below_low(f: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    f = f.copy()
    f.iloc[7, f.columns.get_loc("high")] = f["low"].iloc[7] * 0.9
    return f, 7


def _low_above_open(f: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    f = f.copy()
    f.iloc[8, f.columns.get_loc("low")] = f["open"].iloc[8] * 1.001
    f.iloc[8, f.columns.get_loc("high")] = f["low"].iloc[8] * 1.1
    return f, 8


def _close_above_high(f: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    f = f.copy()
    f.iloc[9, f.columns.get_loc("close")] = f["high"].iloc[9] * 1.01
    return f, 9


@pytest.mark.parametrize(
    ("rule", "corrupt"),
    [
        ("nan", _set("open", 4, np.nan)),
        ("nan", _set("volume", 6, np.nan)),
        ("nan", _set("close", 5, np.inf)),
        ("positive", _set("close", 3, -1.0)),
        ("positive", _set("low", 12, 0.0)),
        ("high>=low", _high_below_low),
        ("low<=open,close", _low_above_open),
        ("open,close<=high", _close_above_high),
        ("volume>=0", _set("volume", 11, -5.0)),
    ],
)
def test_each_value_rule_names_symbol_timestamp_and_rule(
    make_ohlcv: FrameFactory, rule: str, corrupt: Corrupt
) -> None:
    good = make_ohlcv(30, symbol="ACME")
    bad, pos = corrupt(good)
    ts = bad.index[pos]
    with pytest.raises(ValidationError) as info:
        validate(bad)
    err = info.value
    assert (err.symbol, err.rule, err.timestamp) == ("ACME", rule, ts)
    msg = str(err)
    assert msg.startswith(f"ACME at {ts}: ")
    assert f"[rule: {rule}]" in msg
    # the same rule fails with repair=True: repairs only sort and de-duplicate
    with pytest.raises(ValidationError, match=rf"\[rule: {rule}\]"):
        validate(bad, repair=True)


def test_value_rule_counts_bad_rows_and_reports_the_first(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(30, symbol="ACME")
    f.iloc[[20, 5, 25], f.columns.get_loc("volume")] = -1.0
    with pytest.raises(ValidationError, match=r"negative volume in 3 row\(s\)") as info:
        validate(f)
    assert info.value.timestamp == f.index[5]


def test_duplicate_timestamps_fail_naming_the_first(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(20, symbol="DUP")
    bad = pd.concat([f.iloc[:6], f.iloc[5:6] * 1.01, f.iloc[6:]])
    bad.attrs = dict(f.attrs)
    with pytest.raises(ValidationError) as info:
        validate(bad)
    err = info.value
    assert (err.symbol, err.rule, err.timestamp) == ("DUP", "duplicates", f.index[5])
    assert f"DUP at {f.index[5]}: 1 duplicate timestamp(s) [rule: duplicates]" in str(err)
    assert "repair" in str(err)


def test_unsorted_timestamps_fail_where_time_goes_backwards(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(20, symbol="UNS")
    order = [0, 1, 3, 2, *range(4, 20)]
    bad = f.iloc[order]
    with pytest.raises(ValidationError) as info:
        validate(bad)
    err = info.value
    assert (err.symbol, err.rule, err.timestamp) == ("UNS", "increasing", f.index[2])
    assert "timestamps go backwards [rule: increasing]" in str(err)


def test_naive_timestamps_fail(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(10, symbol="NAIVE")
    f.index = f.index.tz_localize(None)
    with pytest.raises(
        ValidationError, match=r"^NAIVE: timestamps are naive \[rule: utc\]"
    ) as info:
        validate(f)
    assert info.value.rule == "utc"
    assert info.value.timestamp is None


def test_non_utc_timestamps_fail(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(10, symbol="NY")
    f.index = f.index.tz_convert("America/New_York")
    with pytest.raises(
        ValidationError, match=r"NY: timestamps are in America/New_York \[rule: utc\]"
    ):
        validate(f)


def test_non_timestamp_index_fails(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(10, symbol="IDX").reset_index(drop=True)
    with pytest.raises(ValidationError, match=r"\[rule: timestamps\]"):
        validate(f)


def test_missing_column_fails(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(10, symbol="COL").drop(columns=["volume"])
    with pytest.raises(ValidationError, match=r"COL: missing column\(s\) volume \[rule: columns\]"):
        validate(f)


def test_symbol_argument_overrides_attrs(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(10, symbol="FROM_ATTRS")
    f.iloc[2, 0] = np.nan
    with pytest.raises(ValidationError, match=r"^GIVEN at "):
        validate(f, "GIVEN")


def test_validation_error_is_a_user_data_error() -> None:
    assert issubclass(ValidationError, DataError)
    assert issubclass(ValidationError, UserError)
    assert issubclass(ValidationError, ValueError)


# ---------------------------------------------------------------------------- repairs


def test_repair_sorts_and_drops_duplicates_keeping_the_last(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(20, symbol="REP")
    later = f.iloc[[4]] * 1.01  # a corrected version of row 4, delivered later
    bad = pd.concat([f.iloc[10:], f.iloc[:10], later])
    bad.attrs = dict(f.attrs)
    snapshot = bad.copy()

    out, report = validate(bad, repair=True)

    assert out.index.is_monotonic_increasing and out.index.is_unique
    assert list(out.index) == list(f.index)
    pd.testing.assert_series_equal(out.iloc[4], later.iloc[0])
    assert report.repaired == [
        "sorted",
        "dropped 1 duplicate(s) (kept the last of each): 2020-01-07 00:00:00+00:00",
    ]
    assert report.rows == 20
    assert "repaired: sorted; dropped 1 duplicate(s) (kept the last of each): 2020-01-07" in (
        report.summary()
    )
    assert out.attrs == f.attrs
    pd.testing.assert_frame_equal(bad, snapshot)  # the input is not modified


def test_a_clean_frame_passes_unchanged(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(50, symbol="OK")
    out, report = validate(f)
    pd.testing.assert_frame_equal(out, f)
    assert report.ok and report.repaired == [] and report.rows == 50
    assert report.missing_bars == 0 and report.gap_pct == 0.0
    assert report.summary() == "OK: 50 rows, gaps 0.00%"


# ------------------------------------------------------------------------------- gaps


def test_gap_percentage_for_daily_stocks_counts_exchange_sessions(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(100, symbol="GAP")  # business days from 2020-01-01, holidays included
    holes = f.drop(f.index[[10, 11, 40, 41, 42]])
    _, report = validate(holes)
    n_sessions = len(sessions(f.index[0], f.index[-1]))
    assert n_sessions == 96  # 2020-01-01, MLK day and Presidents' day are NYSE holidays
    assert report.missing_bars == 5
    assert report.gap_pct == pytest.approx(100 * 5 / 96)
    assert report.ok  # gaps are reported, not failures


def test_exchange_holidays_are_not_gaps(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(260, symbol="HOL", start="2020-01-01")
    nyse = f[f.index.isin(sessions(f.index[0], f.index[-1]))]
    assert len(f) - len(nyse) == 9  # New Year, MLK, Presidents', Good Friday, Memorial, July 3, ...
    _, report = validate(nyse)
    assert report.missing_bars == 0 and report.gap_pct == 0.0


def test_gap_percentage_for_daily_crypto_counts_calendar_days(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(40, symbol="BTC/USD", freq="D")
    assert f.attrs["asset_class"] == "crypto"
    _, report = validate(f)
    assert report.missing_bars == 0
    _, report = validate(f.drop(f.index[[3, 4]]))
    assert report.missing_bars == 2
    assert report.gap_pct == pytest.approx(5.0)
    # the same rows judged as a stock calendar would count weekends as present bars
    weekdays_only = f[f.index.day_of_week < 5]
    _, report = validate(weekdays_only)
    assert report.missing_bars > 0


def test_gap_percentage_for_intraday_crypto(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(200, symbol="ETH/USD", timeframe="1h")
    _, report = validate(f.drop(f.index[50:60]))
    assert report.missing_bars == 10
    assert report.gap_pct == pytest.approx(5.0)


def test_intraday_stock_gaps_are_not_judged(make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(200, symbol="IBM", timeframe="1h")
    _, report = validate(f.drop(f.index[50:60]))
    assert report.missing_bars == 0 and report.gap_pct == 0.0


# --------------------------------------------------------------------- split detection


def _with_jump(f: pd.DataFrame, at: int, factor: float) -> pd.DataFrame:
    out = f.copy()
    out.iloc[at:, :4] = out.iloc[at:, :4].to_numpy() * factor
    return out


@pytest.mark.parametrize(
    ("factor", "ratio", "text"),
    [(1 / 2, 2.0, "2:1"), (1 / 5, 5.0, "5:1"), (1 / 3, 3.0, "3:1"), (10.0, 0.1, "1:10")],
)
def test_an_unadjusted_split_is_flagged(
    make_ohlcv: FrameFactory, factor: float, ratio: float, text: str
) -> None:
    f = _with_jump(make_ohlcv(60, symbol="SPL"), 30, factor)
    _, report = validate(f)
    assert not report.ok
    assert len(report.split_suspects) == 1
    ts, got = report.split_suspects[0]
    assert ts == f.index[30]
    assert got == pytest.approx(ratio)
    assert f"possible unadjusted split {text} at {f.index[30]}" in report.summary()


def test_a_large_move_that_is_no_split_ratio_is_not_flagged(make_ohlcv: FrameFactory) -> None:
    _, report = validate(_with_jump(make_ohlcv(60, symbol="CRASH"), 30, 0.6))
    assert report.ok and report.split_suspects == []


def test_adjusted_frames_are_not_checked_for_splits(make_ohlcv: FrameFactory) -> None:
    f = _with_jump(make_ohlcv(60, symbol="ADJ"), 30, 0.5)
    f.attrs["adjustment"] = "adjusted"
    _, report = validate(f)
    assert report.split_suspects == []


def _read_4063(path_dir: Path, name: str) -> pd.DataFrame:
    frames = read_csv_frames(path_dir / name, symbol="4063.T")
    return frames["4063.T"]


def test_real_missed_split_4063T_is_flagged(yf_repair: Path) -> None:
    bad = _read_4063(yf_repair, "4063-T-1d-bad-stock-split.csv")
    assert bad.index.is_monotonic_increasing  # the file is newest-first: the reader reverses it
    newest_first = bad.iloc[::-1]
    newest_first.attrs = dict(bad.attrs)
    with pytest.raises(ValidationError, match=r"^4063\.T at .*\[rule: increasing\]"):
        validate(newest_first)
    out, report = validate(newest_first, repair=True)
    assert report.repaired == ["sorted"]
    assert report.rows == 22
    # Shin-Etsu's 5:1 split took effect on 2023-03-29; before it the prices were never divided
    assert report.split_suspects == [(pd.Timestamp("2023-03-29", tz="UTC"), 5.0)]
    assert out.loc["2023-03-28", "close"].item() == 20710.0
    assert out.loc["2023-03-29", "open"].item() == 4146.0


def test_real_fixed_4063T_is_not_flagged(yf_repair: Path) -> None:
    fixed = _read_4063(yf_repair, "4063-T-1d-bad-stock-split-fixed.csv")
    out, report = validate(fixed, repair=True)
    assert report.split_suspects == []
    assert report.ok
    assert out.loc["2023-03-28", "close"].item() == 4142.0


# ------------------------------------------------------------------ embedded real sample


def test_embedded_sample_is_real_daily_data() -> None:
    sample = load_sample()
    assert tuple(sample) == SAMPLE_SYMBOLS
    for sym in ("AAPL", "IBM", "MSFT"):
        f = sample[sym]
        assert len(f) == 3270
        assert f.index[0] == pd.Timestamp("2000-03-01", tz="UTC")
        assert f.index[-1] == pd.Timestamp("2013-03-01", tz="UTC")
    assert sample["GOOG"].index[0] == pd.Timestamp("2004-08-19", tz="UTC")
    assert sample["FB"].index[0] == pd.Timestamp("2012-05-18", tz="UTC")
    for sym, f in sample.items():
        assert f.attrs["symbol"] == sym and f.attrs["source"] == "sample"
        assert f.attrs["adjustment"] == "raw" and f.attrs["asset_class"] == "stocks"
        assert str(f.index.dtype) == "datetime64[ns, UTC]"


def test_embedded_sample_raw_prices_show_the_real_splits() -> None:
    reports = {sym: validate(f)[1] for sym, f in load_sample().items()}
    # AAPL split 2:1 on 2000-06-21 and 2005-02-28, MSFT 2:1 on 2003-02-18; IBM not in this span
    assert reports["AAPL"].split_suspects == [
        (pd.Timestamp("2000-06-21", tz="UTC"), 2.0),
        (pd.Timestamp("2005-02-28", tz="UTC"), 2.0),
    ]
    assert reports["MSFT"].split_suspects == [(pd.Timestamp("2003-02-18", tz="UTC"), 2.0)]
    assert reports["IBM"].split_suspects == []


def test_embedded_sample_adjusted_has_no_split_jumps() -> None:
    raw = load_sample()
    adjusted = load_sample(adjusted=True)
    for sym, f in adjusted.items():
        assert f.attrs["adjustment"] == "adjusted"
        # adjusted frames skip the split check; prove the jumps are gone by checking as raw
        f = f.copy()
        f.attrs["adjustment"] = "raw"
        _, report = validate(f)
        assert report.split_suspects == [], sym
        pd.testing.assert_index_equal(f.index, raw[sym].index)
        assert (f["volume"] == raw[sym]["volume"]).all()
    # across AAPL's 2005 2:1 split the adjustment factor halves (no dividends were paid then)
    factor = adjusted["AAPL"]["close"] / raw["AAPL"]["close"]
    before, after = factor.loc["2005-02-25"].item(), factor.loc["2005-02-28"].item()
    assert before / after == pytest.approx(0.5, rel=1e-3)
