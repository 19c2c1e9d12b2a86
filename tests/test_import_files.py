"""``btml data import`` on files in the shapes users have (tests/fixtures/import, real prices).

Each refused import leaves the store byte for byte as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from btml.cli import main
from feeds.calendars import is_open, sessions
from feeds.frame import make_frame
from feeds.live import in_regular_session
from feeds.store import ParquetStore

IMPORT = Path(__file__).parent / "fixtures" / "import"
KAGGLE = IMPORT / "kaggle_dow"
ALL_STOCKS = KAGGLE / "all_stocks_2000-03-01_to_2013-03-01.csv"


def btml(store: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(store), *args])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the store with its bytes (lock files aside)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def refused(store: Path, *args: str) -> str:
    """Run an import that must be refused: exit 2, no traceback, the store unchanged."""
    before = snapshot(store)
    res = btml(store, "data", "import", *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and "Traceback" not in res.output
    assert res.stdout == ""
    assert snapshot(store) == before
    return res.stderr


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


# ------------------------------------------------------------- the store is never corrupted


def test_an_adjusted_and_a_raw_series_are_not_joined(store: Path) -> None:
    # observed: an adjusted series plus a raw one was merged with a +30x jump, validate said ok
    first = btml(
        store, "data", "import", str(IMPORT / "aapl_2000_2005_adjusted.csv"), "--symbol", "AAPL"
    )
    assert first.exit_code == 0, first.output
    msg = refused(store, str(IMPORT / "aapl_2006_2013_raw.csv"), "--symbol", "AAPL")
    assert "AAPL: the price jumps +" in msg and "at 2006-01-03 00:00:00+00:00" in msg
    assert "--replace" in msg and "--allow-jump" in msg
    frame = ParquetStore(store).read("AAPL")
    assert frame.index[-1] == pd.Timestamp("2005-12-30", tz="UTC")


def test_another_adjustment_is_refused_and_replace_overwrites(store: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(IMPORT / "aapl_2006_2013_raw.csv")
    with_adj = raw.assign(**{"Adj Close": raw["Close"] * 0.5})
    path = tmp_path / "AAPL.csv"
    with_adj.to_csv(path, index=False)
    assert btml(store, "data", "import", str(path), "--adjust").exit_code == 0
    msg = refused(store, str(IMPORT / "aapl_2006_2013_raw.csv"), "--symbol", "AAPL")
    assert "adjustment 'adjusted' -> 'raw'" in msg and "--replace" in msg
    res = btml(
        store,
        "data",
        "import",
        str(IMPORT / "aapl_2006_2013_raw.csv"),
        "--symbol",
        "AAPL",
        "--replace",
    )
    assert res.exit_code == 0, res.output
    stored = ParquetStore(store).read("AAPL")
    assert stored.attrs["adjustment"] == "raw"
    assert stored["close"].tolist() == raw["Close"].tolist()


def test_an_overlap_with_other_prices_names_the_first_differing_row(
    store: Path, tmp_path: Path
) -> None:
    raw = pd.read_csv(IMPORT / "aapl_2006_2013_raw.csv")
    assert (
        btml(
            store, "data", "import", str(IMPORT / "aapl_2006_2013_raw.csv"), "--symbol", "AAPL"
        ).exit_code
        == 0
    )
    revised = raw.iloc[100:200].copy()
    revised.loc[revised.index[50:], "Close"] = revised["Close"].iloc[50:] * 1.001
    revised["High"] = revised[["High", "Close"]].max(axis=1)
    path = tmp_path / "AAPL.csv"
    revised.to_csv(path, index=False)
    msg = refused(store, str(path))
    first = pd.Timestamp(revised["Date"].iloc[50], tz="UTC")
    assert f"AAPL: 50 of 100 overlapping rows have other prices, first at {first}" in msg


def test_a_jump_at_a_seam_fails_validation(store: Path) -> None:
    a = str(IMPORT / "aapl_2000_2005_adjusted.csv")
    b = str(IMPORT / "aapl_2006_2013_raw.csv")
    assert btml(store, "data", "import", a, "--symbol", "AAPL").exit_code == 0
    res = btml(store, "data", "import", b, "--symbol", "AAPL", "--allow-jump")
    assert res.exit_code == 0, res.output
    res = btml(store, "data", "validate", "AAPL")
    assert res.exit_code == 1
    assert "where two imports were joined" in res.stdout and "at 2006-01-03" in res.stdout


def test_a_symbol_stored_under_another_asset_class_is_refused(store: Path) -> None:
    path = str(IMPORT / "close_only.csv")
    assert btml(store, "data", "import", path, "--symbol", "SPX").exit_code == 0
    msg = refused(store, path, "--symbol", "SPX", "--asset-class", "index")
    assert "SPX: already stored as stocks" in msg and "btml data rm SPX" in msg


def _long_file(tmp_path: Path) -> Path:
    """A long file (Kaggle's layout) holding AAPL then MSFT."""
    path = tmp_path / "aapl_msft_long.csv"
    parts = [pd.read_csv(KAGGLE / f"{s}_2000-03-01_to_2013-03-01.csv") for s in ("AAPL", "MSFT")]
    pd.concat(parts).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("layout", ["wide", "long"])
def test_a_refused_replace_of_a_multi_symbol_file_changes_nothing(
    store: Path, tmp_path: Path, layout: str
) -> None:
    # observed: --replace skipped the checks; AAPL was replaced, then MSFT (stored as an index)
    # failed the asset-class check inside the write loop: exit 2, no run, the store half changed
    path = str(IMPORT / "wide_closes.csv" if layout == "wide" else _long_file(tmp_path))
    assert btml(store, "data", "import", path).exit_code == 0
    assert btml(store, "data", "rm", "MSFT", "--yes").exit_code == 0
    res = btml(store, "data", "import", path, "--symbol", "MSFT", "--asset-class", "index")
    assert res.exit_code == 0, res.output
    msg = refused(store, path, "--replace")
    assert msg.startswith("error: MSFT: already stored as index") and "btml data rm MSFT" in msg
    assert len(msg.splitlines()) == 1
    listed = btml(store, "runs", "list", "--json")
    assert len(json.loads(listed.stdout)) == 2  # the two imports above; no run for the refused one


def test_a_series_from_another_source_is_refused(store: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(IMPORT / "aapl_2006_2013_raw.csv")
    yahoo = make_frame(
        raw.iloc[:100].set_index(pd.DatetimeIndex(raw["Date"].iloc[:100], tz="UTC")),
        symbol="AAPL",
        source="yahoo",
        timeframe="1Day",
    )
    ParquetStore(store).write(yahoo)
    path = tmp_path / "AAPL.csv"
    raw.iloc[50:150].to_csv(path, index=False)  # the same prices, half of them new days
    msg = refused(store, str(path))
    assert "AAPL: the stored series differs from this one (source 'yahoo' -> 'csv')" in msg
    assert "--replace" in msg and len(msg.splitlines()) == 1
    assert ParquetStore(store).read("AAPL").attrs["source"] == "yahoo"


# ------------------------------------------------------- another timeframe of a stored symbol


def _ea_daily(tmp_path: Path) -> Path:
    """EA's daily bars, made from the hourly fixture."""
    hourly = pd.read_csv(IMPORT / "ea_hourly.csv")
    day = hourly["Datetime"].str[:10]
    agg = {"Open": "first", "High": "max", "Low": "min", "Close": "last", "Volume": "sum"}
    path = tmp_path / "EA.csv"
    hourly.groupby(day).agg(agg).rename_axis("Date").to_csv(path)
    return path


def _params(store: Path, run_line: str) -> dict[str, object]:
    shown = btml(store, "runs", "show", run_line.removeprefix("run "), "--json")
    assert shown.exit_code == 0, shown.output
    params: dict[str, object] = json.loads(shown.stdout)["params"]
    return params


def test_another_timeframe_is_refused_and_add_timeframe_keeps_both(
    store: Path, tmp_path: Path
) -> None:
    # observed: hourly bars of a symbol stored as daily went in beside it without a word
    hourly = str(IMPORT / "ea_hourly.csv")
    assert btml(store, "data", "import", str(_ea_daily(tmp_path))).exit_code == 0
    daily_file = store / "raw/stocks/1Day/EA.parquet"
    daily_bytes = daily_file.read_bytes()
    msg = refused(store, hourly, "--symbol", "EA")
    assert msg == (
        "error: EA is stored at 1Day; these bars are 1h. Nothing was written: keep both series "
        "with --add-timeframe, replace the stored one with --replace, or import under another "
        "symbol (--symbol EA_1h)\n"
    )
    res = btml(store, "data", "import", hourly, "--symbol", "EA", "--add-timeframe")
    assert res.exit_code == 0, res.output
    assert daily_file.read_bytes() == daily_bytes
    assert len(ParquetStore(store).read("EA", "1h")) == len(pd.read_csv(hourly))
    params = _params(store, res.stdout.splitlines()[-1])
    assert params["add_timeframe"] is True and params["removed"] == {}
    # both are stored now: more hourly bars go into the hourly series without the flag
    res = btml(store, "data", "import", hourly, "--symbol", "EA")
    assert res.exit_code == 0, res.output
    assert sorted(s.timeframe for s in ParquetStore(store).list()[0]) == ["1Day", "1h"]


def test_replace_puts_another_timeframe_in_place_of_the_stored_one(
    store: Path, tmp_path: Path
) -> None:
    assert btml(store, "data", "import", str(_ea_daily(tmp_path))).exit_code == 0
    res = btml(
        store, "data", "import", str(IMPORT / "ea_hourly.csv"), "--symbol", "EA", "--replace"
    )
    assert res.exit_code == 0, res.output
    daily_file = store / "raw/stocks/1Day/EA.parquet"
    assert f"EA: replaced the stored 1Day series (removed {daily_file})" in res.stdout
    assert [(s.symbol, s.timeframe) for s in ParquetStore(store).list()[0]] == [("EA", "1h")]
    params = _params(store, res.stdout.splitlines()[-1])
    assert params["replace"] is True and params["removed"] == {"EA": [str(daily_file)]}


def test_add_timeframe_under_another_asset_class_is_refused(store: Path, tmp_path: Path) -> None:
    daily = str(_ea_daily(tmp_path))
    assert btml(store, "data", "import", daily, "--asset-class", "index").exit_code == 0
    hourly = str(IMPORT / "ea_hourly.csv")
    msg = refused(store, hourly, "--symbol", "EA", "--add-timeframe")
    assert "EA: already stored as index" in msg and "--asset-class index" in msg
    msg = refused(store, hourly, "--symbol", "EA")
    assert msg.startswith("error: EA is stored at 1Day (index); these bars are 1h.")
    args = ("--symbol", "EA", "--add-timeframe", "--asset-class", "index")
    assert btml(store, "data", "import", hourly, *args).exit_code == 0
    assert ParquetStore(store).find("EA", "1h") == store / "raw/index/1h/EA.parquet"


def test_data_rm_removes_one_series(store: Path) -> None:
    assert btml(store, "data", "import", str(ALL_STOCKS), "--drop-invalid").exit_code == 0
    res = btml(store, "data", "rm", "IBM", "--yes")
    assert res.exit_code == 0, res.output
    assert [s.symbol for s in ParquetStore(store).list()[0]] == ["AAPL", "MSFT"]
    res = btml(store, "data", "rm", "IBM", "--yes")
    assert res.exit_code == 2 and "IBM (1Day) is not in the store" in res.stderr
    res = btml(store, "data", "rm", "AAPL")  # no --yes, no terminal: nothing removed
    assert res.exit_code != 0
    assert len(ParquetStore(store).list()[0]) == 2


# ---------------------------------------------------------------- the shapes of real files


def test_kaggle_dow_files_import_as_they_are(store: Path) -> None:
    for sym in ("AAPL", "MSFT"):
        res = btml(store, "data", "import", str(KAGGLE / f"{sym}_2000-03-01_to_2013-03-01.csv"))
        assert res.exit_code == 0, res.output
        assert res.stdout.startswith(f"{sym}: 3270 rows")  # the symbol comes from the Name column
    frame = ParquetStore(store).read("MSFT")
    raw = pd.read_csv(KAGGLE / "MSFT_2000-03-01_to_2013-03-01.csv")
    assert frame["close"].tolist() == raw["Close"].tolist()


def test_bad_rows_are_reported_all_at_once_and_drop_invalid_keeps_the_rest(store: Path) -> None:
    msg = refused(store, str(ALL_STOCKS))
    lines = msg.splitlines()
    assert "2 of 9810 rows break a rule; nothing was imported" in lines[0]
    assert "--drop-invalid" in lines[0]
    assert lines[1:] == [
        "  line 4772: IBM '2006-02-17': Open is empty [rule: missing]",
        "  line 5672: IBM '2009-09-16': Open is empty [rule: missing]",
    ]
    res = btml(store, "data", "import", str(ALL_STOCKS), "--drop-invalid")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[1].startswith("IBM: 3268 rows")
    kept = Path(res.stdout.splitlines()[-2].split(" -> ")[1])
    assert kept.parent == store / "rejected" / "1Day"
    rejected = pd.read_csv(kept)
    assert rejected["line"].tolist() == [4772, 5672]
    assert rejected["Date"].tolist() == ["2006-02-17", "2009-09-16"]


def test_only_the_first_ten_bad_rows_are_listed(store: Path) -> None:
    msg = refused(store, str(IMPORT / "aapl_2012_bad_rows.csv"), "--symbol", "AAPL")
    lines = msg.splitlines()
    assert "12 of 250 rows break a rule" in lines[0]
    assert len(lines) == 12 and lines[-1] == "  ... and 2 more"
    assert lines[1] == "  line 5: AAPL '2012-13-45': unreadable date [rule: date]"
    rules = {ln.split("[rule: ")[1].rstrip("]") for ln in lines[1:11]}
    assert rules == {"date", "number", "high>=low", "positive", "missing", "volume>=0"}


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("pandas_to_csv.csv", None),
        ("pandas_rangeindex.csv", "a pandas row-number column was ignored"),
        ("semicolon_dayfirst.csv", "separator semicolon, decimal mark ','"),
    ],
)
def test_pandas_and_spreadsheet_exports(store: Path, name: str, note: str | None) -> None:
    res = btml(store, "data", "import", str(IMPORT / name), "--symbol", "AAPL")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("AAPL: 543 rows, gaps 0.00%")
    if note:
        assert note in res.stdout
    frame = ParquetStore(store).read("AAPL")
    assert frame.index[0] == pd.Timestamp("2011-01-03", tz="UTC")
    assert frame.index[1] == pd.Timestamp("2011-01-04", tz="UTC")  # 04/01/2011 is day-first
    assert frame["close"].iloc[:2].tolist() == [329.57, 331.29]


def test_ambiguous_day_first_dates_ask_for_an_option(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "X.csv"
    path.write_text("Date;Close\n03/01/2011;1,5\n04/01/2011;1,6\n05/01/2011;1,7\n")
    msg = refused(store, str(path))
    assert "could be day-first or month-first; say which with --dayfirst or --monthfirst" in msg
    res = btml(store, "data", "import", str(path), "--dayfirst")
    assert res.exit_code == 0, res.output
    assert ParquetStore(store).read("X").index[0] == pd.Timestamp("2011-01-03", tz="UTC")


def test_close_only_and_wide_files(store: Path) -> None:
    res = btml(store, "data", "import", str(IMPORT / "close_only.csv"), "--symbol", "AAPL")
    assert res.exit_code == 0, res.output
    assert "close only: open, high and low set to the close, volume to 0" in res.stdout
    f = ParquetStore(store).read("AAPL")
    assert (f["open"] == f["close"]).all() and (f["volume"] == 0).all()

    other = store.parent / "other"
    wide_file = str(IMPORT / "wide_closes.csv")
    res = btml(other, "data", "import", wide_file, "--asset-class", "index", "--symbol", "IBM")
    assert res.exit_code == 0, res.output
    wide = pd.read_csv(IMPORT / "wide_closes.csv")
    stored = ParquetStore(other).read("IBM", asset_class="index")
    assert stored["close"].tolist() == wide["IBM"].tolist()
    res = btml(other, "data", "import", wide_file, "--asset-class", "index")
    assert res.exit_code == 0, res.output  # IBM again: the same rows agree
    assert [ln.split(":")[0] for ln in res.stdout.splitlines()[:-1]] == ["AAPL", "IBM", "MSFT"]


def _explicit_file(tmp_path: Path, option: str) -> tuple[Path, dict[str, pd.DataFrame]]:
    """A file that needs ``option``, and the rows it holds per symbol (real AAPL, MSFT prices)."""
    aapl = pd.read_csv(IMPORT / "aapl_2006_2013_raw.csv").iloc[:60]
    path = tmp_path / "AAPL.csv"
    if option == "--sep":  # a database dump: pipes, decimal commas
        aapl.to_csv(path, sep="|", decimal=",", index=False)
    elif option == "--date-col":  # two date columns, neither named like one
        listed = aapl.assign(Listed="1980-12-12").rename(columns={"Date": "When"})
        cols = ["Listed", "When", "Open", "High", "Low", "Close", "Volume"]
        listed[cols].to_csv(path, index=False)
    elif option == "--symbol-col":  # a long file whose symbol column has an unknown name
        rows = {
            s: pd.read_csv(KAGGLE / f"{s}_2000-03-01_to_2013-03-01.csv").iloc[:60]
            for s in ("AAPL", "MSFT")
        }
        long = pd.concat(rows.values()).rename(columns={"Name": "Tkr"})
        long.to_csv(path, index=False)
        return path, rows
    else:  # decimal commas in quoted cells of a comma-separated file, three decimals each
        aapl.to_csv(path, decimal=",", float_format="%.3f", index=False)
        aapl = aapl.round(3)
    return path, {"AAPL": aapl}


@pytest.mark.parametrize(
    ("option", "value", "without"),
    [
        ("--sep", "|", None),  # sniffed as well: the option must agree with it
        ("--date-col", "When", "'Listed', 'When' all hold dates; name the bars' date column"),
        ("--symbol-col", "Tkr", "column 'Tkr' looks like a symbol column (AAPL, MSFT)"),
        ("--decimal", ",", "cells like '72,332' could have a thousands separator or a decimal"),
    ],
)
def test_files_read_with_explicit_options(
    store: Path, tmp_path: Path, option: str, value: str, without: str | None
) -> None:
    path, expected = _explicit_file(tmp_path, option)
    if without is not None:  # without the option: refused, naming it
        msg = refused(store, str(path))
        assert without in msg and option in msg and len(msg.splitlines()) == 1
    res = btml(store, "data", "import", str(path), option, value)
    assert res.exit_code == 0, res.output
    assert [ln.split(":")[0] for ln in res.stdout.splitlines()[:-1]] == list(expected)
    for sym, src in expected.items():
        stored = ParquetStore(store).read(sym)
        assert stored.index.tolist() == pd.DatetimeIndex(src["Date"], tz="UTC").tolist()
        for col in ("Open", "High", "Low", "Close", "Volume"):
            assert stored[col.lower()].tolist() == src[col].astype(float).tolist(), col


def test_thousands_dots_and_quoted_decimal_commas_are_sniffed(store: Path, tmp_path: Path) -> None:
    # found while writing the tests above: a German export of an index (13.233,71) was
    # stored as 13.23371 without a word
    dax = tmp_path / "DAX.csv"
    dax.write_text(
        "Date;Open;High;Low;Close\n"
        "02.01.2020;13.233,71;13.385,93;13.169,19;13.385,93\n"
        "03.01.2020;13.338,13;13.338,13;13.178,47;13.219,14\n"
        "06.01.2020;13.150,00;13.150,00;12.948,17;13.126,99\n"
    )
    res = btml(store, "data", "import", str(dax))
    assert res.exit_code == 0, res.output
    assert ParquetStore(store).read("DAX")["close"].tolist() == [13385.93, 13219.14, 13126.99]
    quoted = tmp_path / "Q.csv"
    quoted.write_text('Date,Close\n2020-01-02,"1,5"\n2020-01-03,"1,25"\n2020-01-06,"1,75"\n')
    res = btml(store, "data", "import", str(quoted))
    assert res.exit_code == 0, res.output
    assert ParquetStore(store).read("Q")["close"].tolist() == [1.5, 1.25, 1.75]


def test_unknown_layout_names_the_options(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("When,Ticker,Comment\n2020-01-02,AAPL,hello\n")
    msg = refused(store, str(path))
    assert "a symbol column but no Close column" in msg
    path.write_text("Id,Open,High,Low,Close\n1,1,2,0.5,1.5\n")
    assert "name it with --date-col" in refused(store, str(path))


# ------------------------------------------------------------------ timeframes are checked


def test_hourly_bars_are_inferred_and_a_wrong_timeframe_refused(store: Path) -> None:
    msg = refused(store, str(IMPORT / "ea_hourly.csv"), "--symbol", "EA", "--timeframe", "1Day")
    assert "spaced as 1h bars but --timeframe says 1Day; pass --timeframe 1h" in msg
    res = btml(store, "data", "import", str(IMPORT / "ea_hourly.csv"), "--symbol", "EA")
    assert res.exit_code == 0, res.output
    frame = ParquetStore(store).read("EA", "1h")
    raw = pd.read_csv(IMPORT / "ea_hourly.csv")
    assert len(frame) == len(raw)  # every hourly bar kept, none folded into a day


def test_monthly_bars_are_refused(store: Path) -> None:
    msg = refused(store, str(IMPORT / "aapl_monthly.csv"))
    assert "the bars are monthly (most common spacing 31 days)" in msg


def test_repair_lists_what_it_drops(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "D.csv"
    path.write_text(
        "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,10\n"
        "2020-01-03,1,2,0.5,1.6,10\n2020-01-03,1,2,0.5,1.7,10\n2020-01-06,1,2,0.5,1.5,10\n"
    )
    msg = refused(store, str(path))
    assert "1 timestamp(s) appear twice with different values, first 2020-01-03" in msg
    res = btml(store, "data", "import", str(path), "--repair")
    assert res.exit_code == 0, res.output
    assert "dropped 1 earlier row(s) of duplicated timestamps: lines 3" in res.stdout
    assert "D: 1 rejected row(s) left out ->" in res.stdout
    assert ParquetStore(store).read("D")["close"].tolist() == [1.5, 1.7, 1.5]


# --------------------------------------------------------------- errors are one clear line


def test_a_bad_date_option_is_one_line(store: Path) -> None:
    res = btml(store, "data", "download", "AAPL", "--start", "notadate")
    assert res.exit_code == 2
    assert res.stderr == "error: cannot read 'notadate' as a date; write it as YYYY-MM-DD\n"


def test_an_offline_yahoo_download_says_it_cannot_reach_yahoo() -> None:
    from curl_cffi import requests as curl_requests

    from feeds.sources.yahoo import _translate

    try:  # a real curl_cffi failure: nothing listens on this loopback port
        curl_requests.get("http://127.0.0.1:9/", timeout=5)
    except Exception as err:  # noqa: BLE001 - whatever curl_cffi raises is what yfinance sees
        assert getattr(getattr(err, "response", None), "status_code", None) == 0
        translated = _translate(err, "AAPL 1Day")
    assert translated is not None
    assert "cannot reach Yahoo" in str(translated) and "HTTP 0" not in str(translated)


# ---------------------------------------------------------------------- exchange calendar


def test_the_live_market_hours_filter_knows_holidays_and_early_closes() -> None:
    assert in_regular_session(pd.Timestamp("2026-11-25 15:00", tz="UTC"))  # a Wednesday
    assert not in_regular_session(pd.Timestamp("2026-11-26 15:00", tz="UTC"))  # Thanksgiving
    assert in_regular_session(pd.Timestamp("2026-11-27 17:59", tz="UTC"))  # 12:59 EST
    assert not in_regular_session(pd.Timestamp("2026-11-27 18:30", tz="UTC"))  # early close 13:00
    assert not in_regular_session(pd.Timestamp("2026-07-03 15:00", tz="UTC"))  # July 4 observed
    assert is_open(pd.Timestamp("2026-07-04 15:00", tz="UTC"), asset_class="crypto")


def test_sessions_follow_the_exchange() -> None:
    days = sessions(pd.Timestamp("2026-12-21"), pd.Timestamp("2027-01-04"))
    assert pd.Timestamp("2026-12-25", tz="UTC") not in days
    assert pd.Timestamp("2027-01-01", tz="UTC") not in days
    assert len(days) == 9


# ------------------------------------------------------------------------ the run registry


def test_an_import_is_recorded_as_a_run_and_a_refused_one_is_not(store: Path) -> None:
    import hashlib
    import json

    path = KAGGLE / "MSFT_2000-03-01_to_2013-03-01.csv"
    res = btml(store, "data", "import", str(path))
    assert res.exit_code == 0, res.output
    run_id = res.stdout.splitlines()[-1].removeprefix("run ")
    shown = btml(store, "runs", "show", run_id, "--json")
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert record["kind"] == "import" and record["status"] == "ok"
    assert record["inputs"] == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    assert record["metrics"]["rows_MSFT"] == 3270
    assert record["params"]["options"]["symbol"] is None
    # a refused import (the same rows with other prices) leaves the store and registry as they were
    other = store.parent / "MSFT.csv"
    raw = pd.read_csv(path)
    raw["Close"] = raw["Close"] * 1.01
    raw["High"] = raw[["High", "Close"]].max(axis=1)
    raw.to_csv(other, index=False)
    refused(store, str(other), "--symbol", "MSFT")
    listed = json.loads(btml(store, "runs", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id]
