"""The Parquet store: layout, round trip, metadata, filtered reads, merge, update, concurrency,
corrupt files, failed writes; and ``download`` of many symbols with per-symbol failures."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import (
    ConfigError,
    CorruptFileError,
    SourceUnavailable,
    StoreConflict,
    StoreError,
    SymbolNotFound,
    ValidationError,
)
from feeds.download import download
from feeds.sources.base import Source
from feeds.store import ParquetStore
from tests.conftest import FrameFactory, ohlcv_frame, parquet_files, temp_files

# ------------------------------------------------------------------------------ layout


def test_layout_follows_asset_class_timeframe_and_symbol(store: ParquetStore) -> None:
    root = store.root
    assert store.path_for("AAPL", "1Day") == root / "raw/stocks/1Day/AAPL.parquet"
    assert store.path_for("aapl", "1d") == root / "raw/stocks/1Day/AAPL.parquet"
    assert store.path_for("BTC/USD", "1h") == root / "raw/crypto/1h/BTC_USD.parquet"
    assert store.path_for("TECH10", "1Day", "index") == root / "raw/index/1Day/TECH10.parquet"


@pytest.mark.parametrize("symbol", ["", " AAPL", "A:B", "A*", "a\0b"])
def test_invalid_symbols_are_refused(store: ParquetStore, symbol: str) -> None:
    with pytest.raises(ConfigError, match="invalid symbol"):
        store.path_for(symbol, "1Day")


def test_unknown_asset_class_and_timeframe_are_refused(store: ParquetStore) -> None:
    with pytest.raises(ConfigError, match="asset_class must be one of stocks, crypto, index"):
        store.path_for("AAPL", "1Day", "bonds")
    with pytest.raises(ConfigError, match="unknown timeframe '1Dya'.*did you mean '1Day'"):
        store.path_for("AAPL", "1Dya")


# -------------------------------------------------------------------------- round trip


def test_round_trip_keeps_values_index_and_metadata(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    f = make_ohlcv(250, symbol="RT", source="unit-test")
    before = pd.Timestamp.now(tz="UTC")
    path = store.write(f)
    after = pd.Timestamp.now(tz="UTC")

    assert path == store.root / "raw/stocks/1Day/RT.parquet"
    back = store.read("RT")
    pd.testing.assert_frame_equal(back, f, check_freq=False)
    assert str(back.index.dtype) == "datetime64[ns, UTC]"
    assert back.index.name == "datetime"
    for key in ("symbol", "source", "timeframe", "adjustment", "asset_class"):
        assert back.attrs[key] == f.attrs[key]
    assert before <= pd.Timestamp(back.attrs["fetched_at"]) <= after

    # the metadata lives in the Parquet file itself, readable without this project
    meta = json.loads(pq.read_schema(path).metadata[b"btml"])
    assert meta["source"] == "unit-test"
    assert meta["symbol"] == "RT"
    assert pd.Timestamp(meta["fetched_at"]).tzinfo is not None
    assert temp_files(store.root) == []


def test_a_given_fetched_at_is_kept(store: ParquetStore, make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(5, symbol="FA")
    f.attrs["fetched_at"] = "2024-05-06T07:08:09+00:00"
    store.write(f)
    assert store.read("FA").attrs["fetched_at"] == "2024-05-06T07:08:09+00:00"


def test_crypto_and_index_frames_go_to_their_folders(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    btc = make_ohlcv(48, symbol="BTC/USD", timeframe="1h")
    idx = make_ohlcv(20, symbol="TECH10", asset_class="index")
    assert store.write(btc) == store.root / "raw/crypto/1h/BTC_USD.parquet"
    assert store.write(idx) == store.root / "raw/index/1Day/TECH10.parquet"
    assert len(store.read("BTC/USD", "1h")) == 48
    assert len(store.read("TECH10")) == 20  # found without naming the asset class
    assert store.read("TECH10", asset_class="index").attrs["asset_class"] == "index"
    with pytest.raises(SymbolNotFound):
        store.read("TECH10", asset_class="stocks")


def test_an_unnamed_or_microsecond_index_is_stored_as_datetime_ns(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    f = make_ohlcv(30, symbol="UNNAMED")
    g = f.copy()
    g.index = pd.DatetimeIndex(g.index.as_unit("us"), name=None)
    store.write(g)
    back = store.read("UNNAMED", start="2020-01-10")
    assert back.index.name == "datetime"
    assert str(back.index.dtype) == "datetime64[ns, UTC]"
    assert back.index[0] == pd.Timestamp("2020-01-10", tz="UTC")
    good, bad = store.list()
    assert [s.symbol for s in good] == ["UNNAMED"] and bad == []


def test_write_needs_symbol_timeframe_and_source(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    f = make_ohlcv(5)
    del f.attrs["source"]
    with pytest.raises(ConfigError, match="frame.attrs must name 'source'"):
        store.write(f)
    assert parquet_files(store.root) == []


def test_write_validates_and_writes_nothing_on_bad_data(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    f = make_ohlcv(10, symbol="BAD")
    f.iloc[3, 1] = f.iloc[3, 2] / 2  # high < low
    with pytest.raises(ValidationError, match=r"BAD at .*\[rule: high>=low\]"):
        store.write(f)
    assert parquet_files(store.root) == []


def test_write_repairs_only_when_asked(store: ParquetStore, make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(10, symbol="UNSORTED")
    shuffled = f.iloc[::-1]
    with pytest.raises(ValidationError, match="increasing"):
        store.write(shuffled)
    store.write(shuffled, repair=True)
    pd.testing.assert_frame_equal(store.read("UNSORTED"), f, check_freq=False)


# ------------------------------------------------------------------------ filtered reads


def test_reads_filter_by_date_range(store: ParquetStore, make_ohlcv: FrameFactory) -> None:
    f = make_ohlcv(60, symbol="FLT")  # business days from 2020-01-01
    store.write(f)

    part = store.read("FLT", start="2020-01-06", end="2020-01-10")
    assert list(part.index) == list(pd.bdate_range("2020-01-06", "2020-01-09", tz="UTC"))
    pd.testing.assert_frame_equal(part, f.loc["2020-01-06":"2020-01-09"], check_freq=False)

    assert store.read("FLT", start="2020-03-20").index[0] == pd.Timestamp("2020-03-20", tz="UTC")
    assert store.read("FLT", end="2020-01-03").index.tolist() == [
        pd.Timestamp("2020-01-01", tz="UTC"),
        pd.Timestamp("2020-01-02", tz="UTC"),
    ]
    # an aware bound in another zone is converted: 2020-01-06 19:00 New York is 2020-01-07 00:00 UTC
    ny = store.read("FLT", start=pd.Timestamp("2020-01-06 19:00", tz="America/New_York"))
    assert ny.index[0] == pd.Timestamp("2020-01-07", tz="UTC")
    empty = store.read("FLT", start="2021-01-01")
    assert empty.empty and list(empty.columns[:5]) == ["open", "high", "low", "close", "volume"]


def test_reading_an_unknown_symbol_says_how_to_get_it(store: ParquetStore) -> None:
    with pytest.raises(
        SymbolNotFound, match=r"NOPE \(1Day\) is not in the store.*btml data download NOPE"
    ):
        store.read("NOPE")


# ---------------------------------------------------------------------------- merging


def test_merge_refuses_overlapping_rows_with_other_prices(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    full = make_ohlcv(30, symbol="MRG")
    first = full.iloc[:20]
    second = full.iloc[10:].copy()
    mid = (second["high"] + second["low"]) / 2
    second.iloc[:10, 3] = mid.iloc[:10]  # revised closes for the overlapping rows
    assert (second["close"].iloc[:10] != full["close"].iloc[10:20]).all()
    second.attrs = dict(full.attrs)
    path = store.write(first)
    before = path.read_bytes()
    with pytest.raises(
        StoreConflict,
        match=r"MRG: 10 of 10 overlapping rows have other prices, "
        r"first at 2020-01-15 00:00:00\+00:00 .*--replace",
    ):
        store.write(second)
    assert path.read_bytes() == before


def test_merge_of_agreeing_rows_records_the_seam(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    full = make_ohlcv(30, symbol="MRG")
    store.write(full.iloc[:20])
    store.write(full.iloc[10:])  # the overlap agrees: merged, the join point recorded
    back = store.read("MRG")
    assert back.index.equals(full.index)
    assert np.array_equal(back.to_numpy(), full.to_numpy())
    assert json.loads(back.attrs["seams"]) == [full.index[20].isoformat()]


def test_series_of_lists_a_symbol_at_every_timeframe_and_asset_class(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    assert store.series_of("EA") == []
    store.write(make_ohlcv(10, symbol="EA"))
    store.write(make_ohlcv(10, symbol="EA", timeframe="1h", freq="1h", asset_class="index"))
    store.write(make_ohlcv(10, symbol="EAX"))  # another symbol whose name starts alike
    root = store.root / "raw"
    assert store.series_of("ea") == [root / "index/1h/EA.parquet", root / "stocks/1Day/EA.parquet"]


def test_write_without_merge_replaces(store: ParquetStore, make_ohlcv: FrameFactory) -> None:
    full = make_ohlcv(30, symbol="REPL")
    store.write(full)
    store.write(full.iloc[25:], merge=False)
    assert len(store.read("REPL")) == 5


def test_merging_into_a_corrupt_file_fails_and_keeps_it(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    f = make_ohlcv(10, symbol="CM")
    path = store.write(f)
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CorruptFileError):
        store.write(f)
    assert path.read_bytes() == b"PAR1 this is not parquet"


# ----------------------------------------------------------------- list and describe


def test_list_describes_every_file_from_metadata(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    assert store.list() == ([], [])
    store.write(make_ohlcv(10, symbol="AAA", source="s1"))
    store.write(make_ohlcv(24, symbol="ETH/USD", timeframe="1h", source="s2"))
    good, bad = store.list()
    assert bad == []
    by = {s.symbol: s for s in good}
    assert set(by) == {"AAA", "ETH/USD"}
    a = by["AAA"]
    assert (a.asset_class, a.timeframe, a.rows, a.source) == ("stocks", "1Day", 10, "s1")
    assert a.first == pd.Timestamp("2020-01-01", tz="UTC")
    assert a.last == pd.Timestamp("2020-01-14", tz="UTC")
    assert pd.Timestamp(a.fetched_at) <= pd.Timestamp.now(tz="UTC")
    e = by["ETH/USD"]
    assert (e.asset_class, e.timeframe, e.rows, e.source) == ("crypto", "1h", 24, "s2")
    assert e.last == pd.Timestamp("2020-01-01 23:00", tz="UTC")


# ------------------------------------------------------------------------- corruption


def test_a_corrupt_file_names_itself_and_spares_the_others(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    store.write(make_ohlcv(10, symbol="GOOD"))
    bad_path = store.write(make_ohlcv(10, symbol="BROKEN", seed=1))
    data = bad_path.read_bytes()
    bad_path.write_bytes(data[: len(data) // 2])  # a truncated file, as after a crash

    with pytest.raises(CorruptFileError) as info:
        store.read("BROKEN")
    assert info.value.path == bad_path
    assert str(bad_path) in str(info.value)
    assert "delete it and download again" in str(info.value)

    assert len(store.read("GOOD")) == 10
    good, bad = store.list()
    assert [s.symbol for s in good] == ["GOOD"]
    assert len(bad) == 1 and bad[0].path == bad_path and str(bad_path) in str(bad[0])


def test_a_foreign_parquet_file_is_reported_not_fatal(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    store.write(make_ohlcv(10, symbol="GOOD"))
    foreign = store.root / "raw/stocks/1Day/OTHER.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), foreign)

    good, bad = store.list()
    assert [s.symbol for s in good] == ["GOOD"]
    assert [e.path for e in bad] == [foreign]
    with pytest.raises(CorruptFileError, match="OTHER.parquet"):
        store.read("OTHER")
    with pytest.raises(CorruptFileError, match="OTHER.parquet"):
        store.read("OTHER", start="2020-01-01")


# ---------------------------------------------------------------------- failed writes


def _store_is_writable_despite_chmod(tmp_path: Path) -> bool:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    probe_dir.chmod(0o500)
    try:
        (probe_dir / "x").write_text("x")
        return True  # running as root: permissions do not stop us
    except PermissionError:
        return False
    finally:
        probe_dir.chmod(0o700)


def test_read_only_store_raises_store_error(
    tmp_path: Path, store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    f = make_ohlcv(10, symbol="RO")
    if _store_is_writable_despite_chmod(tmp_path):
        # root ignores mode bits: make the folder the file would go in a regular file instead
        target_dir = store.path_for("RO", "1Day").parent
        target_dir.parent.mkdir(parents=True)
        target_dir.write_text("not a folder")
        with pytest.raises(StoreError, match="1Day: cannot create this folder"):
            store.write(f)
        assert target_dir.read_text() == "not a folder"
    else:
        path = store.write(f)
        old = path.read_bytes()
        path.parent.chmod(0o500)
        try:
            with pytest.raises(StoreError, match="not writable"):
                store.write(make_ohlcv(20, symbol="RO"))
        finally:
            path.parent.chmod(0o700)
        assert path.read_bytes() == old
    assert temp_files(store.root) == []


def test_a_full_disk_leaves_the_old_file_and_no_temp_file(
    store: ParquetStore, make_ohlcv: FrameFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store.write(make_ohlcv(10, symbol="FULL"))
    old = path.read_bytes()

    def no_space(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(StoreError, match=r"FULL.parquet: write failed \(No space left on device\)"):
        store.write(make_ohlcv(40, symbol="FULL"), merge=False)
    monkeypatch.undo()

    assert path.read_bytes() == old
    assert temp_files(store.root) == []
    assert len(store.read("FULL")) == 10


def test_a_crash_while_writing_leaves_the_old_file_and_no_temp_file(
    store: ParquetStore, make_ohlcv: FrameFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store.write(make_ohlcv(10, symbol="CRASH"))
    old = path.read_bytes()

    def interrupted(table: pa.Table, where: object, **kwargs: object) -> None:
        where.write(b"PAR1 partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write(make_ohlcv(40, symbol="CRASH"), merge=False)
    monkeypatch.undo()

    assert path.read_bytes() == old
    assert temp_files(store.root) == []


# ------------------------------------------------------------------ concurrent writers


def _finish(procs: list[mp.process.BaseProcess], timeout: float = 60.0) -> None:
    """Join the processes this test started; kill any that hang so none outlives the test."""
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


N_WRITERS = 3
WRITES_EACH = 12
ROWS_PER_WRITE = 3


def _concurrent_writer(root: str, worker: int, barrier: object) -> None:
    """Write this worker's share of the rows of one symbol, a few rows per write."""
    full = ohlcv_frame(N_WRITERS * WRITES_EACH * ROWS_PER_WRITE, symbol="RACE", seed=42)
    mine = full.iloc[worker::N_WRITERS]
    store = ParquetStore(root)
    barrier.wait()  # type: ignore[attr-defined]  # all start writing together, imports done
    for k in range(WRITES_EACH):
        chunk = mine.iloc[k * ROWS_PER_WRITE : (k + 1) * ROWS_PER_WRITE]
        chunk.attrs = dict(full.attrs)
        store.write(chunk)


def test_concurrent_writers_lose_no_rows(store: ParquetStore) -> None:
    ctx = mp.get_context("spawn")  # not fork: the parent already runs pyarrow threads
    barrier = ctx.Barrier(N_WRITERS, timeout=60)
    procs = [
        ctx.Process(target=_concurrent_writer, args=(str(store.root), w, barrier))
        for w in range(N_WRITERS)
    ]
    for p in procs:
        p.start()
    _finish(procs)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS

    full = ohlcv_frame(N_WRITERS * WRITES_EACH * ROWS_PER_WRITE, symbol="RACE", seed=42)
    back = store.read("RACE")
    pd.testing.assert_frame_equal(back, full, check_freq=False)
    assert temp_files(store.root) == []
    assert parquet_files(store.root) == [store.path_for("RACE", "1Day")]


def _replacing_writer(root: str, writes: int, started: object) -> None:
    """Replace one symbol's file over and over with two frames of different lengths."""
    store = ParquetStore(root)
    short, long = ohlcv_frame(50, symbol="TORN", seed=1), ohlcv_frame(400, symbol="TORN", seed=2)
    started.set()  # type: ignore[attr-defined]
    for i in range(writes):
        store.write(long if i % 2 else short, merge=False)


def test_readers_never_see_a_torn_file_while_a_writer_replaces_it(store: ParquetStore) -> None:
    short, long = ohlcv_frame(50, symbol="TORN", seed=1), ohlcv_frame(400, symbol="TORN", seed=2)
    store.write(short)
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    writer = ctx.Process(target=_replacing_writer, args=(str(store.root), 150, started))
    writer.start()
    reads, lengths = 0, set()
    try:
        assert started.wait(60)
        while writer.is_alive():
            back = store.read("TORN", start="2020-01-01")  # must never raise CorruptFileError
            (info,), bad = store.list()
            assert bad == [] and info.rows in (50, 400)
            expected = long if len(back) == 400 else short
            pd.testing.assert_frame_equal(back, expected, check_freq=False)
            reads += 1
            lengths.add(len(back))
    finally:
        _finish([writer])
    assert writer.exitcode == 0
    assert reads >= 20 and lengths == {50, 400}  # the reads really overlapped the writes
    assert temp_files(store.root) == []


# ------------------------------------------------------------------ missing ranges / update


class FrameFetcher:
    """A fetch function over a known frame that records what it was asked for."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.calls: list[tuple[pd.Timestamp, pd.Timestamp]] = []

    def __call__(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        self.calls.append((start, end))
        out = self.frame[(self.frame.index >= start) & (self.frame.index < end)]
        if out.empty:
            raise SymbolNotFound(f"no rows between {start} and {end}")
        out.attrs = dict(self.frame.attrs)
        return out


def _ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def test_missing_ranges(store: ParquetStore, make_ohlcv: FrameFactory) -> None:
    s, e = _ts("2019-12-01"), _ts("2020-03-01")
    assert store.missing_ranges("MR", "1Day", s, e) == [(s, e)]
    store.write(make_ohlcv(10, symbol="MR", start="2020-01-06"))  # 2020-01-06 .. 2020-01-17
    assert store.missing_ranges("MR", "1Day", s, e) == [
        (s, _ts("2020-01-06")),
        (_ts("2020-01-18"), e),
    ]
    assert store.missing_ranges("MR", "1Day", _ts("2020-01-06"), _ts("2020-01-18")) == []
    assert store.missing_ranges("MR", "1Day", _ts("2020-01-08"), _ts("2020-01-10")) == []
    assert store.missing_ranges("MR", "1Day", _ts("2020-02-01"), e) == [(_ts("2020-02-01"), e)]


def test_update_fetches_only_the_missing_tail(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    source = make_ohlcv(130, symbol="UPD")  # business days 2020-01-01 .. 2020-06-30
    fetch = FrameFetcher(source)

    path, new = store.update("UPD", fetch, timeframe="1Day", start="2020-01-01", end="2020-03-01")
    assert fetch.calls == [(_ts("2020-01-01"), _ts("2020-03-01"))]
    assert new == len(pd.bdate_range("2020-01-01", "2020-02-29")) == 43
    assert path == store.path_for("UPD", "1Day")

    fetch.calls.clear()
    path, new = store.update("UPD", fetch, timeframe="1Day", start="2020-01-01", end="2020-04-01")
    # the store ends on Friday 2020-02-28: only the day after it onwards is asked for
    assert fetch.calls == [(_ts("2020-02-29"), _ts("2020-04-01"))]
    assert new == 22

    fetch.calls.clear()
    assert store.update("UPD", fetch, timeframe="1Day", start="2020-01-01", end="2020-04-01") == (
        path,
        0,
    )
    assert fetch.calls == []

    # the source has nothing before 2020: the gap is asked for once, and nothing breaks
    path2, new = store.update("UPD", fetch, timeframe="1Day", start="2019-12-01", end="2020-04-01")
    assert fetch.calls == [(_ts("2019-12-01"), _ts("2020-01-01"))]
    assert (path2, new) == (path, 0)

    back = store.read("UPD")
    pd.testing.assert_frame_equal(back, source.loc[:"2020-03-31"], check_freq=False)


def test_update_of_an_unknown_symbol_raises_and_stores_nothing(
    store: ParquetStore, make_ohlcv: FrameFactory
) -> None:
    fetch = FrameFetcher(make_ohlcv(10, symbol="GHOST", start="2010-01-01"))
    with pytest.raises(SymbolNotFound):
        store.update("GHOST", fetch, timeframe="1Day", start="2020-01-01", end="2020-02-01")
    assert parquet_files(store.root) == []


# ------------------------------------------------------------------------- download


class DictSource:
    """A real in-memory source: serves frames from a dict; symbols in ``down`` are unreachable."""

    name = "dict"

    def __init__(self, frames: dict[str, pd.DataFrame], down: set[str] | None = None) -> None:
        self.frames = frames
        self.down = set(down or ())
        self.calls: list[tuple[str, pd.Timestamp | None, pd.Timestamp | None]] = []

    def fetch(
        self,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        self.calls.append((symbol, start, end))
        if symbol in self.down:
            raise SourceUnavailable(f"dict: {symbol}: connection reset; retry later")
        if symbol not in self.frames:
            raise SymbolNotFound(f"dict: no such symbol {symbol}")
        f = self.frames[symbol]
        out = f[(f.index >= start) & (f.index < end)]
        if out.empty:
            raise SymbolNotFound(f"dict: {symbol}: no rows")
        out = out.copy()
        out.attrs = dict(f.attrs)
        return out


SYMBOLS = [f"S{i:02d}" for i in range(10)]


def _dict_source(down: set[str] | None = None) -> DictSource:
    frames = {s: ohlcv_frame(65, symbol=s, seed=i) for i, s in enumerate(SYMBOLS)}
    return DictSource(frames, down)  # business days 2020-01-01 .. 2020-03-31


def test_dict_source_is_a_source() -> None:
    assert isinstance(_dict_source(), Source)


def test_download_survives_one_failing_symbol_and_rerun_fetches_only_it(
    store: ParquetStore,
) -> None:
    source = _dict_source(down={"S03"})
    seen: list[str] = []
    report = download(
        store, source, SYMBOLS, start="2020-01-01", end="2020-04-01", on_symbol=seen.append
    )

    assert seen == SYMBOLS
    assert not report.ok
    assert list(report.failed) == ["S03"]
    assert "connection reset" in report.failed["S03"]
    assert sorted(report.stored) == [s for s in SYMBOLS if s != "S03"]
    assert all(n == 65 for _, n in report.stored.values())
    assert "S03: FAILED: dict: S03: connection reset; retry later" in report.lines()
    good, bad = store.list()
    assert sorted(s.symbol for s in good) == sorted(report.stored) and bad == []
    for s in report.stored:
        pd.testing.assert_frame_equal(store.read(s), source.frames[s], check_freq=False)

    source.down.clear()
    source.calls.clear()
    report = download(store, source, SYMBOLS, start="2020-01-01", end="2020-04-01")
    assert report.ok
    assert source.calls == [("S03", _ts("2020-01-01"), _ts("2020-04-01"))]
    assert report.stored["S03"][1] == 65
    assert all(n == 0 for s, (_, n) in report.stored.items() if s != "S03")
    assert len(store.list()[0]) == 10


def test_download_records_unknown_symbols(store: ParquetStore) -> None:
    source = _dict_source()
    report = download(store, source, ["S01", "NOPE"], start="2020-01-01", end="2020-04-01")
    assert list(report.stored) == ["S01"]
    assert "no such symbol NOPE" in report.failed["NOPE"]


def test_download_stores_under_the_given_asset_class(store: ParquetStore) -> None:
    source = _dict_source()
    report = download(
        store, source, ["S05"], start="2020-01-01", end="2020-04-01", asset_class="index"
    )
    assert report.stored["S05"][0] == store.root / "raw/index/1Day/S05.parquet"


def test_download_lets_programming_errors_through(store: ParquetStore) -> None:
    class Broken(DictSource):
        def fetch(self, symbol: str, **kwargs: object) -> pd.DataFrame:  # type: ignore[override]
            raise TypeError("a bug, not a data problem")

    with pytest.raises(TypeError, match="a bug"):
        download(store, Broken({}), ["S01"], start="2020-01-01", end="2020-04-01")
