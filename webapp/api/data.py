"""``data``: the store's series with coverage, source and their validation result."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from core.errors import BtmlError
from feeds.store import ParquetStore, StoredSeries
from feeds.validate import validate
from webapp.api.deps import settings

router = APIRouter(tags=["data"])
_cache: dict[tuple[str, float, int], dict[str, Any]] = {}
_cache_lock = threading.Lock()


def check(store: ParquetStore, s: StoredSeries) -> dict[str, Any]:
    """The series' validation result, cached by file and modification time."""
    st = s.path.stat()
    key = (str(s.path), st.st_mtime, st.st_size)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    try:
        _, report = validate(store.read(s.symbol, s.timeframe, asset_class=s.asset_class), s.symbol)
        result = {"ok": report.ok, "summary": report.summary()}
    except BtmlError as err:
        result = {"ok": False, "summary": str(err)}
    with _cache_lock:
        _cache[key] = result
    return result


def series_row(s: StoredSeries, root: Path) -> dict[str, Any]:
    return {
        "symbol": s.symbol, "asset_class": s.asset_class, "timeframe": s.timeframe,
        "rows": s.rows, "first": s.first.isoformat() if s.first is not None else None,
        "last": s.last.isoformat() if s.last is not None else None, "source": s.source,
        "fetched_at": s.fetched_at, "file": s.path.relative_to(root).as_posix(),
    }  # fmt: skip


@router.get("/data")
def list_data(request: Request, validate_series: bool = True) -> dict[str, Any]:
    """Every stored series; with ``validate_series`` its check (cached until the file changes)."""
    root = settings(request).store
    store = ParquetStore(root)
    good, bad = store.list()
    rows = []
    for s in good:
        row = series_row(s, root)
        if validate_series:
            row["validation"] = check(store, s)
        rows.append(row)
    return {"series": rows, "errors": [str(e) for e in bad]}


@router.get("/data/{symbol}/bars")
def bars(
    request: Request, symbol: str, timeframe: str = "1Day", limit: int = 500
) -> dict[str, Any]:
    """The last ``limit`` bars of one series (for the price chart)."""
    from webapp.api.deps import unprocessable

    try:
        frame = ParquetStore(settings(request).store).read(symbol, timeframe).iloc[-limit:]
    except BtmlError as err:
        raise unprocessable(str(err), "symbol") from err
    return {
        "symbol": symbol, "timeframe": timeframe,
        "bars": [{"time": int(t.timestamp()), "open": r.open, "high": r.high, "low": r.low,
                  "close": r.close, "volume": r.volume}
                 for t, r in zip(frame.index, frame.itertuples(), strict=True)],
    }  # fmt: skip
