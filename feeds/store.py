"""The Parquet store: ``{root}/raw/{stocks,crypto,index}/{timeframe}/{SYMBOL}.parquet``.

Writes are atomic (a temp file in the same folder, fsync, then ``os.replace``) and serialised
per file by a lock, so two writers cannot corrupt a file and a crash or a full disk never leaves a
partial one. The source, fetch time and frame metadata are kept in the Parquet schema metadata.
Reads can be filtered by date range; a corrupt file raises an error naming it while every other
file stays readable.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from core.errors import (
    ConfigError,
    CorruptFileError,
    StoreConflict,
    StoreError,
    SymbolNotFound,
)
from core.utc import to_utc
from feeds.frame import ASSET_CLASSES, OHLCV_COLUMNS, guess_asset_class
from feeds.timeframes import get_timeframe
from feeds.validate import parse_seams, validate

_META_KEY = b"btml"
LOCK_TIMEOUT_S = 60.0


# what must agree between a stored series and rows added to it, with the value when unset
_CHECKED_ATTRS = {"source": "?", "adjustment": "raw", "bars": "ohlcv"}


_HOW_TO_REPLACE = (
    "Replace it (`btml data import --replace`, or `btml data rm {sym}` before a download), "
    "or store this one under another symbol (--symbol {sym}_2)"
)


def merge_series(
    old: pd.DataFrame, new: pd.DataFrame, attrs: dict[str, object]
) -> tuple[pd.DataFrame, dict[str, object]]:
    """``new`` added to the stored ``old``, refusing what would silently corrupt the series.

    Raises :class:`~core.errors.StoreConflict` when the source or adjustment differ, or when
    rows at the same timestamps have other prices (the first such row is named). Returns the
    merged frame and its attrs: the stored ones, updated, with the new join points added to
    ``seams``.
    """
    sym = str(attrs["symbol"])
    diff = [
        f"{k} {old.attrs.get(k, d)!r} -> {attrs.get(k, d)!r}"
        for k, d in _CHECKED_ATTRS.items()
        if old.attrs.get(k, d) != attrs.get(k, d)
    ]
    if diff:
        raise StoreConflict(
            f"{sym}: the stored series differs from this one ({'; '.join(diff)}); nothing was "
            f"written. {_HOW_TO_REPLACE.format(sym=sym)}"
        )
    common = old.index.intersection(new.index)
    if len(common):
        a = old.loc[common, ["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
        b = new.loc[common, ["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
        differs = ~np.isclose(a, b, rtol=1e-6, atol=0.0).all(axis=1)
        if differs.any():
            i = int(np.argmax(differs))
            raise StoreConflict(
                f"{sym}: {int(differs.sum())} of {len(common)} overlapping rows have other prices, "
                f"first at {common[i]} (stored close {a[i, 3]:g}, new close {b[i, 3]:g}); nothing "
                f"was written. {_HOW_TO_REPLACE.format(sym=sym)}"
            )
    merged = pd.concat([old[~old.index.isin(new.index)], new]).sort_index()
    seams = parse_seams(old.attrs.get("seams"))
    if len(old):
        is_new = merged.index.isin(new.index.difference(old.index))
        seams += list(merged.index[1:][is_new[1:] != is_new[:-1]])
    out_attrs = {**old.attrs, **attrs}
    out_attrs.pop("fetched_at", None)
    if seams:
        out_attrs["seams"] = json.dumps(sorted({t.isoformat() for t in seams}))
    return merged, out_attrs


def symbol_to_filename(symbol: str) -> str:
    """File stem for a symbol: ``/`` (crypto pairs) becomes ``_``; other characters are kept."""
    if not symbol or symbol.strip() != symbol or any(c in symbol for c in '\\:*?"<>|\0'):
        raise ConfigError(f"invalid symbol {symbol!r} for the store")
    return symbol.upper().replace("/", "_")


@dataclass(frozen=True)
class StoredSeries:
    """One stored file's description, read from its metadata only."""

    symbol: str
    asset_class: str
    timeframe: str
    path: Path
    rows: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    source: str
    fetched_at: str


class ParquetStore:
    """The OHLCV store rooted at ``root`` (default ``./data_storage``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_for(self, symbol: str, timeframe: str, asset_class: str | None = None) -> Path:
        """Where ``symbol``'s ``timeframe`` bars live."""
        ac = asset_class or guess_asset_class(symbol)
        if ac not in ASSET_CLASSES:
            raise ConfigError(f"asset_class must be one of {', '.join(ASSET_CLASSES)}, got {ac!r}")
        tf = get_timeframe(timeframe).name
        return self.root / "raw" / ac / tf / f"{symbol_to_filename(symbol)}.parquet"

    def find(self, symbol: str, timeframe: str, asset_class: str | None = None) -> Path | None:
        """The stored file for ``symbol``, searching every asset class unless one is given."""
        classes = [asset_class] if asset_class else [guess_asset_class(symbol), *ASSET_CLASSES]
        for ac in dict.fromkeys(classes):
            p = self.path_for(symbol, timeframe, ac)
            if p.exists():
                return p
        return None

    def series_of(self, symbol: str) -> builtins.list[Path]:
        """Every stored file of ``symbol``, whatever its asset class and timeframe, sorted."""
        name = f"{symbol_to_filename(symbol)}.parquet"
        folders = [self.root / "raw" / ac for ac in ASSET_CLASSES]
        return sorted(
            tf / name
            for ac in folders
            if ac.is_dir()
            for tf in ac.iterdir()
            if (tf / name).is_file()
        )

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a read-only mount, or a regular file where a folder should be
            raise StoreError(
                f"{path.parent}: cannot create this folder ({err.strerror or err}); check the store path"
            ) from err
        try:
            lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
            with lock:
                yield
        except Timeout as err:
            raise StoreError(
                f"{path}: another writer holds the lock for over {LOCK_TIMEOUT_S:.0f} s"
            ) from err
        except PermissionError as err:
            raise StoreError(
                f"{path.parent}: not writable ({err.strerror}); check the store path's permissions"
            ) from err

    def write(self, frame: pd.DataFrame, *, merge: bool = True, repair: bool = False) -> Path:
        """Validate and store ``frame`` (its attrs name symbol, timeframe, asset class, source).

        With ``merge`` the rows are added to what is stored, and refused with
        :class:`~core.errors.StoreConflict` (nothing written) when the stored series has another
        source or adjustment, or when overlapping rows carry other prices; the join points are
        kept as ``seams`` so validation can check the prices across them. Without ``merge`` the
        file is replaced. A symbol stored under another asset class is refused either way.
        Returns the file path.
        """
        attrs = dict(frame.attrs)
        for key in ("symbol", "timeframe", "source"):
            if key not in attrs:
                raise ConfigError(f"frame.attrs must name {key!r} to be stored")
        frame, _ = validate(frame, attrs["symbol"], repair=repair)
        # the index is stored as the "datetime" column that reads filter on, in nanoseconds
        frame = frame.set_axis(pd.DatetimeIndex(frame.index, name="datetime").as_unit("ns"), axis=0)
        path = self.path_for(attrs["symbol"], attrs["timeframe"], attrs.get("asset_class"))
        self.check_asset_class(attrs["symbol"], attrs["timeframe"], path)
        with self._locked(path):
            if merge and path.exists():
                frame, attrs = merge_series(self._read_file(path), frame, attrs)
                frame, _ = validate(frame, str(attrs["symbol"]))
            frame.attrs = attrs
            self._atomic_write(frame, path)
        return path

    def check_asset_class(self, symbol: str, timeframe: str, path: Path) -> None:
        """Refuse to store ``symbol`` at ``path`` when it is stored under another asset class."""
        other = self.find(symbol, timeframe)
        if other is not None and other != path:
            raise StoreConflict(
                f"{symbol}: already stored as {other.parent.parent.name} ({other}); remove it "
                f"first (`btml data rm {symbol}`) or store this one under another symbol"
            )

    def write_rejected(self, symbol: str, timeframe: str, rows: pd.DataFrame) -> Path:
        """Keep rows left out of an import in ``{root}/rejected/{timeframe}/``; returns the file."""
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%f")
        path = self.root / "rejected" / get_timeframe(timeframe).name
        path = path / f"{symbol_to_filename(symbol)}.{stamp}.csv"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            rows.to_csv(path, index=False)
        except OSError as err:
            raise StoreError(
                f"{path}: cannot write the rejected rows ({err.strerror or err})"
            ) from err
        return path

    def remove(self, symbol: str, timeframe: str, asset_class: str | None = None) -> Path:
        """Delete ``symbol``'s stored ``timeframe`` file; returns the path that was removed."""
        path = self.find(symbol, timeframe, asset_class)
        if path is None:
            raise SymbolNotFound(
                f"{symbol} ({timeframe}) is not in the store at {self.root}; see `btml data list`"
            )
        with self._locked(path):
            path.unlink()
        with contextlib.suppress(OSError):
            Path(str(path) + ".lock").unlink()
        return path

    def _atomic_write(self, frame: pd.DataFrame, path: Path) -> None:
        meta = {k: v for k, v in frame.attrs.items() if isinstance(v, str | int | float | bool)}
        meta.setdefault("fetched_at", pd.Timestamp.now(tz="UTC").isoformat())
        table = pa.Table.from_pandas(frame, preserve_index=True)
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[_META_KEY] = json.dumps(meta).encode()
        table = table.replace_schema_metadata(schema_meta)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(
                f"{path}: write failed ({err.strerror or err}); the previous file is unchanged"
            ) from err
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _read_file(
        self, path: Path, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None
    ) -> pd.DataFrame:
        filters = []
        if start is not None:
            filters.append(("datetime", ">=", pd.Timestamp(start)))
        if end is not None:
            filters.append(("datetime", "<", pd.Timestamp(end)))
        try:
            # one open file: a writer's os.replace cannot mix the old footer with the new pages
            with pa.OSFile(str(path)) as fh:
                table = pq.read_table(fh, filters=filters or None)
        except (pa.ArrowException, OSError, ValueError, KeyError) as err:
            raise CorruptFileError(
                path, f"{path}: cannot read this Parquet file ({err}); delete it and download again"
            ) from err
        frame = table.to_pandas()
        raw = (table.schema.metadata or {}).get(_META_KEY)
        frame.attrs = json.loads(raw) if raw else {}
        if list(frame.columns[:5]) != list(OHLCV_COLUMNS):
            raise CorruptFileError(
                path, f"{path}: not an OHLCV file (columns {list(frame.columns)})"
            )
        return frame

    def read(
        self,
        symbol: str,
        timeframe: str = "1Day",
        *,
        start: object | None = None,
        end: object | None = None,
        asset_class: str | None = None,
    ) -> pd.DataFrame:
        """Read ``symbol``'s bars in ``[start, end)`` (naive dates are UTC)."""
        path = self.find(symbol, timeframe, asset_class)
        if path is None:
            raise SymbolNotFound(
                f"{symbol} ({timeframe}) is not in the store at {self.root}; "
                f"download it with `btml data download {symbol}` or check `btml data list`"
            )
        return self._read_file(path, to_utc(start), to_utc(end))

    def describe(self, path: Path) -> StoredSeries:
        """Read one file's metadata (no data pages)."""
        try:
            with pa.OSFile(str(path)) as fh, pq.ParquetFile(fh) as pf:
                raw = (pf.schema_arrow.metadata or {}).get(_META_KEY)
                meta = json.loads(raw) if raw else {}
                rows = pf.metadata.num_rows
                col = pf.read(columns=["datetime"]).column("datetime") if rows else None
        except (pa.ArrowException, OSError, ValueError, KeyError) as err:
            raise CorruptFileError(path, f"{path}: cannot read this Parquet file ({err})") from err
        first = pd.Timestamp(col[0].as_py()) if col is not None else None
        last = pd.Timestamp(col[-1].as_py()) if col is not None else None
        return StoredSeries(
            symbol=str(meta.get("symbol", path.stem)),
            asset_class=path.parent.parent.name,
            timeframe=path.parent.name,
            path=path,
            rows=rows,
            first=first,
            last=last,
            source=str(meta.get("source", "?")),
            fetched_at=str(meta.get("fetched_at", "?")),
        )

    def list(self) -> tuple[list[StoredSeries], list[CorruptFileError]]:
        """Every stored series, and the errors for files that could not be read."""
        good: list[StoredSeries] = []
        bad: list[CorruptFileError] = []
        for path in sorted((self.root / "raw").glob("*/*/*.parquet")):
            try:
                good.append(self.describe(path))
            except CorruptFileError as err:
                bad.append(err)
        return good, bad

    def missing_ranges(
        self,
        symbol: str,
        timeframe: str,
        start: pd.Timestamp,
        end: pd.Timestamp,
        asset_class: str | None = None,
    ) -> builtins.list[tuple[pd.Timestamp, pd.Timestamp]]:
        """The parts of ``[start, end)`` not covered by what is stored (before and after it)."""
        path = self.find(symbol, timeframe, asset_class)
        if path is None:
            return [(start, end)]
        info = self.describe(path)
        if info.first is None or info.last is None:
            return [(start, end)]
        step = get_timeframe(timeframe).delta
        out = []
        if start < info.first:
            out.append((start, min(info.first, end)))
        if end > info.last + step:
            out.append((max(info.last + step, start), end))
        return out

    def update(
        self,
        symbol: str,
        fetch: Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame],
        *,
        timeframe: str,
        start: object,
        end: object,
        asset_class: str | None = None,
    ) -> tuple[Path | None, int]:
        """Fetch only the missing part of ``[start, end)`` with ``fetch`` and merge it in.

        Returns the path (None when nothing was stored yet and nothing new came) and the number
        of new rows written.
        """
        s, e = to_utc(start), to_utc(end)
        assert s is not None and e is not None
        new = 0
        path = self.find(symbol, timeframe, asset_class)
        for a, b in self.missing_ranges(symbol, timeframe, s, e, asset_class):
            try:
                part = fetch(a, b)
            except SymbolNotFound:
                if path is None:
                    raise  # nothing stored and nothing returned: the symbol is unknown
                continue  # stored data exists; the source just has nothing in this gap
            if len(part):
                path = self.write(part)
                new += len(part)
        return path, new
