"""backtrader feeds over canonical frames and the Parquet store.

``StoreData`` holds its bars as numpy arrays and copies one row per ``_load``, so it runs at
least as fast as ``bt.feeds.PandasData`` (which indexes the frame with ``.iloc`` per field and
bar) and behaves the same in every engine mode (``runonce`` / ``preload`` on and off). Its
``timeframe`` and ``compression`` come from the frame's metadata, so ``cerebro.resampledata``
works without extra arguments. Datetimes are UTC; backtrader sees them as naive UTC.
"""

from __future__ import annotations

from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from core.errors import ConfigError, DataError
from feeds.frame import OHLCV_COLUMNS
from feeds.store import ParquetStore
from feeds.timeframes import get_timeframe

_EPOCH_BT = 719163.0  # bt.date2num(datetime(1970, 1, 1))
_NS_PER_DAY = 86_400 * 10**9


def datetimes_to_num(index: pd.DatetimeIndex) -> np.ndarray:
    """Vectorised ``bt.date2num`` for a UTC (or naive-UTC) index."""
    ns = index.as_unit("ns").asi8.astype(np.float64)
    return _EPOCH_BT + ns / _NS_PER_DAY


class StoreData(bt.feed.DataBase):  # type: ignore[misc,name-defined]
    """A backtrader data feed over one canonical OHLCV frame.

    Build it with ``StoreData(dataname=frame)`` or, from the store,
    ``StoreData.from_store(store, "AAPL", timeframe="1Day", start="2010-01-01")``.
    """

    params = (("dataname", None),)

    def __init__(self, **kwargs: Any) -> None:
        frame = self.p.dataname
        if not isinstance(frame, pd.DataFrame):
            raise ConfigError("StoreData needs dataname=<canonical OHLCV frame>")
        missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"StoreData: frame lacks column(s) {', '.join(missing)}")
        tfname = frame.attrs.get("timeframe")
        if tfname is not None:
            tf = get_timeframe(tfname)
            self._timeframe = tf.bt_timeframe
            self._compression = tf.bt_compression
            self.p.timeframe = tf.bt_timeframe
            self.p.compression = tf.bt_compression
        if not self.p.name and frame.attrs.get("symbol"):
            self.p.name = str(frame.attrs["symbol"])
            self._name = self.p.name
        self._dt = datetimes_to_num(pd.DatetimeIndex(frame.index))
        self._ohlcv = frame.loc[:, list(OHLCV_COLUMNS)].to_numpy(dtype=np.float64, copy=True)
        self._idx = -1

    @classmethod
    def from_store(
        cls,
        store: ParquetStore,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: object | None = None,
        end: object | None = None,
        asset_class: str | None = None,
        **kwargs: Any,
    ) -> StoreData:
        """Read ``symbol`` from the store (``[start, end)``) and wrap it as a feed."""
        frame = store.read(symbol, timeframe, start=start, end=end, asset_class=asset_class)
        if frame.empty:
            raise DataError(f"{symbol}: no stored bars between {start} and {end}")
        return cls(dataname=frame, name=kwargs.pop("name", symbol), **kwargs)

    def start(self) -> None:
        super().start()
        self._idx = -1
        self._refuse_read_ahead()

    def _refuse_read_ahead(self) -> None:
        """Refuse to run beside finer bars: a bar is shown at its start stamp, so a weekly bar
        (Friday's close) would be seen on Monday, a daily one at the day's first hour. A frame
        re-stamped at its close (``feeds.index_feed.index_feed``) is safe."""
        if self.p.dataname.attrs.get("stamp", "start") != "start":
            return
        env = getattr(self, "_env", None)
        mine = _spacing(self._dt)
        if env is None or mine is None:
            return
        for other in env.datas:
            theirs = _spacing(getattr(other, "_dt", None))
            if other is self or theirs is None or mine <= 1.5 * theirs:
                continue
            raise ConfigError(
                f"{self._name or 'a data'}: its bars ({mine:g} days apart) are coarser than "
                f"{other._name or 'another data'}'s ({theirs:g} days): a plain feed shows each "
                "bar at its start, before its close; use feeds.index_feed.index_feed(frame, "
                "base=<the finer bar size>) or cerebro.resampledata"
            )

    def _load(self) -> bool:
        self._idx += 1
        i = self._idx
        if i >= len(self._dt):
            return False
        row = self._ohlcv[i]
        lines = self.lines
        lines.datetime[0] = self._dt[i]
        lines.open[0] = row[0]
        lines.high[0] = row[1]
        lines.low[0] = row[2]
        lines.close[0] = row[3]
        lines.volume[0] = row[4]
        lines.openinterest[0] = 0.0
        return True


def _spacing(dt: Any) -> float | None:
    """The median spacing of backtrader date numbers (days), None for fewer than 2 bars."""
    if dt is None or len(dt) < 2:
        return None
    return float(np.median(np.diff(np.asarray(dt, dtype=np.float64))))
