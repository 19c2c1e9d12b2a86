"""CSV files into canonical frames: wide and long layouts, names, timezones, adjustment, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError, DataError, SymbolNotFound
from feeds.frame import OHLCV_COLUMNS
from feeds.sources.base import Source, get_source
from feeds.sources.csv_source import CsvSource, read_csv_frames
from feeds.validate import validate
from tests.conftest import LONG_CSV


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _utc(*stamps: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(s, tz="UTC") for s in stamps]


# ------------------------------------------------------------------------------ layouts


def test_wide_yfinance_file(yf_repair: Path) -> None:
    path = yf_repair / "CALM-1d-no-bad-divs.csv"
    frames = read_csv_frames(path, symbol="CALM")
    assert list(frames) == ["CALM"]
    f = frames["CALM"]
    raw = pd.read_csv(path)
    assert len(f) == len(raw) == 662
    assert list(f.columns) == list(OHLCV_COLUMNS)
    assert all(f[c].dtype == np.float64 for c in OHLCV_COLUMNS)
    assert f.index.name == "datetime" and str(f.index.dtype) == "datetime64[ns, UTC]"
    # daily bars sit at 00:00 UTC of their local session date
    assert f.index[0] == pd.Timestamp("2022-01-03", tz="UTC")
    np.testing.assert_array_equal(f["open"].to_numpy(), raw["Open"].to_numpy())
    np.testing.assert_array_equal(f["volume"].to_numpy(), raw["Volume"].to_numpy(dtype=float))
    assert f.attrs == {
        "symbol": "CALM",
        "source": "csv",
        "timeframe": "1Day",
        "adjustment": "raw",
        "asset_class": "stocks",
        "file": "CALM-1d-no-bad-divs.csv",
    }


def test_wide_file_symbol_defaults_to_the_file_stem(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,10\n", "msft.daily.csv"
    )
    assert list(read_csv_frames(p)) == ["MSFT"]


def test_long_file_gives_one_frame_per_ticker(tmp_path: Path) -> None:
    frames = read_csv_frames(_write(tmp_path, LONG_CSV))
    assert sorted(frames) == ["AAPL", "IBM"]
    days = _utc("2000-03-01", "2000-03-02", "2000-03-03")
    assert list(frames["AAPL"].index) == days
    assert list(frames["IBM"].index) == days
    assert frames["AAPL"]["close"].tolist() == [130.31, 122.0, 128.0]
    assert frames["IBM"]["volume"].tolist() == [10807800.0, 11192900.0, 10162800.0]
    assert frames["IBM"].attrs["symbol"] == "IBM"
    for sym, f in frames.items():
        validate(f, sym)  # no error


def test_long_file_symbol_picks_one(tmp_path: Path) -> None:
    p = _write(tmp_path, LONG_CSV)
    assert list(read_csv_frames(p, symbol="IBM")) == ["IBM"]
    with pytest.raises(SymbolNotFound, match="no rows for MSFT; the file holds AAPL, IBM"):
        read_csv_frames(p, symbol="MSFT")


def test_compressed_csv(tmp_path: Path) -> None:
    p = tmp_path / "long.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(LONG_CSV)
    assert sorted(read_csv_frames(p)) == ["AAPL", "IBM"]


@pytest.mark.parametrize(
    "header",
    [
        "DATE,OPEN,HIGH,LOW,CLOSE,VOLUME",
        "date,open,high,low,close,volume",
        "Timestamp,Open,high,LOW,cLoSe,Volume",
        " Datetime , Open , High , Low , Close , Volume ",
    ],
)
def test_column_names_are_case_insensitive(tmp_path: Path, header: str) -> None:
    p = _write(tmp_path, f"{header}\n2020-01-02,10,12,9,11,100\n2020-01-03,11,13,10,12,200\n")
    f = read_csv_frames(p, symbol="X")["X"]
    assert list(f.index) == _utc("2020-01-02", "2020-01-03")
    assert f.iloc[1].tolist() == [11.0, 13.0, 10.0, 12.0, 200.0]


# ----------------------------------------------------------------------------- timezones


def test_intraday_offsets_are_converted_to_utc(yf_repair: Path) -> None:
    path = yf_repair / "EA-15m-no-bad-divs.csv"
    f = read_csv_frames(path, symbol="EA", timeframe="15m")["EA"]
    raw = pd.read_csv(path)
    expected = pd.DatetimeIndex(pd.to_datetime(raw["Datetime"], utc=True), name="datetime")
    pd.testing.assert_index_equal(f.index, expected.as_unit("ns"))
    assert f.index[0] == pd.Timestamp("2026-05-26 08:00", tz="UTC")  # 04:00 New York (EDT)
    assert f.attrs["timeframe"] == "15m"
    _, report = validate(f, "EA")
    assert report.ok


@pytest.mark.parametrize(
    ("name", "first_day"),
    [
        ("4063-T-1d-bad-stock-split-fixed.csv", "2023-04-14"),  # +09:00, newest first
        ("IBE-MC-1d-no-bad-divs.csv", "2022-01-03"),  # +01:00
        ("EWG-1d-no-bad-divs.csv", "2022-01-03"),  # -05:00
    ],
)
def test_daily_offsets_keep_the_local_session_date(
    yf_repair: Path, name: str, first_day: str
) -> None:
    f = read_csv_frames(yf_repair / name, symbol="S")["S"]
    assert f.index.is_monotonic_increasing  # a newest-first file is reversed
    assert pd.Timestamp(first_day, tz="UTC") in (f.index[0], f.index[-1])
    assert (f.index == f.index.normalize()).all()


def test_naive_intraday_timestamps_need_a_zone(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "Datetime,Open,High,Low,Close,Volume\n"
        "2021-03-12 09:30,10,12,9,11,100\n2021-03-15 09:30,10,12,9,11,100\n",
    )
    with pytest.raises(DataError, match=r"no timezone \(first '2021-03-12 09:30'\).*--tz"):
        read_csv_frames(p, timeframe="1m")
    f = read_csv_frames(p, symbol="X", timeframe="1m", tz="America/New_York")["X"]
    # EST before the 2021-03-14 clock change, EDT after
    assert list(f.index) == _utc("2021-03-12 14:30", "2021-03-15 13:30")


def test_naive_dates_for_daily_bars_need_no_zone(tmp_path: Path) -> None:
    p = _write(tmp_path, "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,10\n")
    assert list(read_csv_frames(p, symbol="X")["X"].index) == _utc("2020-01-02")


def test_naive_daily_timestamps_with_times_need_a_zone(tmp_path: Path) -> None:
    p = _write(tmp_path, "Date,Open,High,Low,Close,Volume\n2020-01-02 16:00,1,2,0.5,1.5,10\n")
    with pytest.raises(DataError, match="no timezone"):
        read_csv_frames(p)
    f = read_csv_frames(p, symbol="X", tz="Asia/Tokyo")["X"]
    assert list(f.index) == _utc("2020-01-02")


def test_utc_z_suffix(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "timestamp,open,high,low,close,volume\n2020-01-02T14:30:00Z,1,2,0.5,1.5,10\n"
    )
    f = read_csv_frames(p, symbol="X", timeframe="1m")["X"]
    assert list(f.index) == _utc("2020-01-02 14:30")


def test_mixed_offsets_and_naive_timestamps_are_refused(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "Datetime,Open,High,Low,Close,Volume\n"
        "2020-01-02 09:30-05:00,1,2,0.5,1.5,10\n2020-01-02 09:31,1,2,0.5,1.5,10\n",
    )
    with pytest.raises(DataError, match="some timestamps carry a UTC offset and some do not"):
        read_csv_frames(p, timeframe="1m")


# ------------------------------------------------------------------------------- errors


def test_unparseable_dates_name_the_value(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,10\nnot a date,1,2,0.5,1.5,10\n",
    )
    with pytest.raises(
        DataError,
        match=r"data.csv: 1 of 2 rows break a rule.*\n  line 3: DATA 'not a date': "
        r"unreadable date \[rule: date\]",
    ):
        read_csv_frames(p)


def test_empty_dates_name_the_line(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,10\n,1,2,0.5,1.5,10\n",
    )
    with pytest.raises(DataError, match=r"\n  line 3: DATA '': unreadable date \[rule: date\]"):
        read_csv_frames(p)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    p = _write(tmp_path, "Date,Open,Close,Volume\n2020-01-02,1,1.5,10\n")
    with pytest.raises(DataError, match=r"has open but no high, low column; have \['Date', 'Open'"):
        read_csv_frames(p)


def test_a_missing_date_column_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, "Id,Open,High,Low,Close,Volume\n7,1,2,0.5,1.5,10\n")
    with pytest.raises(DataError, match="no date column .*; name it with --date-col"):
        read_csv_frames(p)


def test_a_file_without_rows(tmp_path: Path) -> None:
    p = _write(tmp_path, "Date,Open,High,Low,Close,Volume\n")
    with pytest.raises(SymbolNotFound, match="the file has no rows"):
        read_csv_frames(p)


def test_a_binary_file(tmp_path: Path) -> None:
    p = tmp_path / "blob.csv"
    p.write_bytes(b"\x00\xff\xfe\x81 not text")
    with pytest.raises(DataError, match="cannot read as CSV"):
        read_csv_frames(p)


def test_non_numeric_prices_are_rejected_rows(tmp_path: Path) -> None:
    p = _write(tmp_path, "Date,Open,High,Low,Close,Volume\n2020-01-02,abc,2,0.5,1.5,10\n")
    with pytest.raises(
        DataError, match=r"line 2: X '2020-01-02': Open is no number \[rule: number\]"
    ):
        read_csv_frames(p, symbol="X")


# ---------------------------------------------------------------------------- adjustment


def test_adj_close_adjustment_scales_ohlc(yf_repair: Path) -> None:
    path = yf_repair / "CALM-1d-no-bad-divs.csv"
    raw = read_csv_frames(path, symbol="CALM")["CALM"]
    adj = read_csv_frames(path, symbol="CALM", adjust=True)["CALM"]
    csv = pd.read_csv(path)
    factor = csv["Adj Close"].to_numpy() / csv["Close"].to_numpy()
    np.testing.assert_allclose(adj["close"].to_numpy(), csv["Adj Close"].to_numpy(), rtol=1e-12)
    for c in ("open", "high", "low"):
        np.testing.assert_allclose(adj[c].to_numpy(), raw[c].to_numpy() * factor, rtol=1e-12)
    np.testing.assert_array_equal(adj["volume"].to_numpy(), raw["volume"].to_numpy())
    assert adj.attrs["adjustment"] == "adjusted"
    assert (adj["close"] < raw["close"]).iloc[0]  # dividends since then lower older prices
    validate(adj, "CALM")


def test_adjust_without_adj_close_is_an_error(tmp_path: Path) -> None:
    p = _write(tmp_path, "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,10\n")
    with pytest.raises(DataError, match="--adjust needs an 'Adj Close' column"):
        read_csv_frames(p, symbol="X", adjust=True)


def test_adj_close_with_underscore_name(tmp_path: Path) -> None:
    p = _write(tmp_path, "date,open,high,low,close,adj_close,volume\n2020-01-02,10,12,8,10,5,10\n")
    f = read_csv_frames(p, symbol="X", adjust=True)["X"]
    assert f.iloc[0].tolist() == [5.0, 6.0, 4.0, 5.0, 10.0]


def test_long_file_adjustment_per_ticker(tmp_path: Path) -> None:
    frames = read_csv_frames(_write(tmp_path, LONG_CSV), adjust=True)
    assert frames["AAPL"]["close"].tolist() == pytest.approx(
        [4.186662803811, 3.9196750983419, 4.1124460048178]
    )
    assert frames["IBM"]["close"].iloc[0] == pytest.approx(73.667718762847)


def test_actions_carry_dividends_and_splits(yf_repair: Path) -> None:
    f = read_csv_frames(yf_repair / "4063-T-1d-bad-stock-split.csv", symbol="4063.T", actions=True)[
        "4063.T"
    ]
    assert list(f.columns) == [*OHLCV_COLUMNS, "dividends", "stock_splits"]
    day = pd.Timestamp("2023-03-30", tz="UTC")
    assert f.loc[day, "stock_splits"] == 5.0
    assert f.loc[day, "dividends"] == 55.0
    assert (f["stock_splits"] != 0).sum() == 1


# ------------------------------------------------------------------------ real bad cases


@pytest.mark.parametrize(
    ("name", "timeframe", "rows"),
    [
        ("CALM-1d-no-bad-divs.csv", "1Day", 662),
        ("EWG-1d-no-bad-divs.csv", "1Day", 662),
        ("IBE-MC-1d-no-bad-divs.csv", "1Day", 677),
        ("EA-15m-no-bad-divs.csv", "15m", 319),
        ("SCR-TO-1d-bad-div.csv", "1Day", 722),
        ("SCR-TO-1d-bad-div-fixed.csv", "1Day", 722),
    ],
)
def test_recorded_yfinance_files_read_and_validate(
    yf_repair: Path, name: str, timeframe: str, rows: int
) -> None:
    frames = read_csv_frames(yf_repair / name, timeframe=timeframe)
    ((sym, f),) = frames.items()
    assert sym == name.split(".")[0].upper()
    out, report = validate(f)
    assert report.rows == rows
    assert report.repaired == [] and report.ok
    assert 0.0 <= report.gap_pct < 5.0


def test_scr_to_bad_dividend_only_shows_in_adjusted_prices(yf_repair: Path) -> None:
    def load(name: str, adjust: bool) -> pd.DataFrame:
        return read_csv_frames(yf_repair / name, symbol="SCR.TO", adjust=adjust)["SCR.TO"]

    bad, fixed = load("SCR-TO-1d-bad-div.csv", False), load("SCR-TO-1d-bad-div-fixed.csv", False)
    pd.testing.assert_frame_equal(bad, fixed, rtol=1e-12)  # the traded prices agree
    bad_adj = load("SCR-TO-1d-bad-div.csv", True)
    fixed_adj = load("SCR-TO-1d-bad-div-fixed.csv", True)
    ratio = bad_adj["close"] / fixed_adj["close"]
    assert ratio.iloc[0] == pytest.approx(2.2503862380981445 / 3.34561409465702)
    assert ratio.iloc[-1] == pytest.approx(1.0)
    validate(bad_adj)
    validate(fixed_adj)


# ------------------------------------------------------------------------------ CsvSource


def test_csv_source_fetches_a_range(tmp_path: Path) -> None:
    src = CsvSource(_write(tmp_path, LONG_CSV))
    assert isinstance(src, Source)
    assert src.name == "csv"
    assert sorted(src.symbols()) == ["AAPL", "IBM"]
    f = src.fetch("IBM", start="2000-03-02", end="2000-03-03")  # type: ignore[arg-type]
    assert list(f.index) == _utc("2000-03-02")
    assert f.attrs["symbol"] == "IBM" and f.attrs["source"] == "csv"
    assert len(src.fetch("AAPL")) == 3


def test_csv_source_errors(tmp_path: Path) -> None:
    src = CsvSource(_write(tmp_path, LONG_CSV))
    with pytest.raises(SymbolNotFound, match="MSFT is not in .*data.csv; it holds AAPL, IBM"):
        src.fetch("MSFT")
    with pytest.raises(SymbolNotFound, match="IBM: no rows"):
        src.fetch("IBM", start=pd.Timestamp("2001-01-01", tz="UTC"))


def test_unknown_source_names_suggest_the_closest() -> None:
    with pytest.raises(ConfigError, match="unknown source 'cvs'.*did you mean 'csv'"):
        get_source("cvs")
