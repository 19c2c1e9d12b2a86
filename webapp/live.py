"""The Live page's figures, read from the order journals and the store (never from the broker:
the dashboard holds no broker keys).

* positions: the journaled fills per symbol (average entry price), valued at the last stored
  daily close (else at the last fill's price); realised P&L from the fills (average cost).
* risk: gross exposure against ``max_gross``; the session's daily loss and drawdown against
  their limits; one-day value at risk at 95 % of the current positions, historical (the 5 %
  quantile of the positions' P&L over the last ``VAR_WINDOW`` stored days) and parametric
  (normal: 1.645 standard deviations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brokers.alpaca.journal import Journal
from brokers.alpaca.journal_model import FillRecord, OrderRecord
from core.errors import BtmlError
from feeds.store import ParquetStore
from strategies.risk import RiskConfig

VAR_WINDOW = 250
Z95 = 1.6448536269514722


@dataclass(frozen=True)
class Book:
    """Everything the journals hold, read once per request."""

    orders: list[OrderRecord]
    fills: list[FillRecord]
    errors: list[str]


def read_book(paths: Sequence[Path]) -> Book:
    orders: list[OrderRecord] = []
    fills: list[FillRecord] = []
    errors: list[str] = []
    for path in paths:
        try:
            with Journal(path) as j:
                orders += j.orders()
                fills += j.fills()
        except BtmlError as err:
            errors.append(f"{path.name}: {err}")
    orders.sort(key=lambda o: o.created_at, reverse=True)
    fills.sort(key=lambda f: f.timestamp)
    return Book(orders, fills, errors)


def order_dict(o: OrderRecord) -> dict[str, Any]:
    return {
        "client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side, "qty": o.qty,
        "notional": o.notional, "type": o.order_type, "status": o.status,
        "filled_qty": o.filled_qty, "filled_avg_price": o.filled_avg_price,
        "created_at": o.created_at.isoformat(), "updated_at": o.updated_at.isoformat(),
        "strategy": o.strategy, "error": o.error,
        "model": f"{o.model_name}:{o.model_version}" if o.model_name else None,
    }  # fmt: skip


def fill_dict(f: FillRecord) -> dict[str, Any]:
    return {"execution_id": f.execution_id, "client_order_id": f.client_order_id,
            "symbol": f.symbol, "side": f.side, "qty": f.qty, "price": f.price,
            "timestamp": f.timestamp.isoformat()}  # fmt: skip


def signals(book: Book, limit: int = 200) -> list[dict[str, Any]]:
    """The model's signal behind each journaled order, newest first."""
    out = []
    for o in book.orders:
        if o.signal is None:
            continue
        out.append({"time": (o.bar_time or o.created_at).isoformat(), "symbol": o.symbol,
                    "side": o.side, "status": o.status, "signal": o.signal,
                    "model": f"{o.model_name}:{o.model_version}" if o.model_name else None})  # fmt: skip
    return out[:limit]


@dataclass
class _Lot:
    qty: float = 0.0
    avg: float = 0.0
    realized: float = 0.0
    last_fill: float | None = None


def position_lots(fills: Sequence[FillRecord]) -> dict[str, _Lot]:
    """Net quantity, average entry price and realised P&L per symbol (average cost)."""
    lots: dict[str, _Lot] = {}
    for f in fills:
        lot = lots.setdefault(f.symbol, _Lot())
        lot.last_fill = f.price
        q = f.qty if f.side == "buy" else -f.qty
        if lot.qty == 0 or (lot.qty > 0) == (q > 0):  # opening or adding
            total = lot.qty + q
            lot.avg = (lot.avg * abs(lot.qty) + f.price * abs(q)) / abs(total)
            lot.qty = total
            continue
        closed = min(abs(q), abs(lot.qty))
        lot.realized += closed * (f.price - lot.avg) * (1 if lot.qty > 0 else -1)
        rest = lot.qty + q
        if rest != 0 and (rest > 0) != (lot.qty > 0):
            lot.avg = f.price  # flipped: the remainder opened at this price
        lot.qty = rest if abs(rest) > 1e-12 else 0.0
    return lots


def last_closes(store: ParquetStore, symbols: Sequence[str], days: int) -> pd.DataFrame:
    """The last ``days`` stored daily closes of ``symbols`` (columns), missing ones left out."""
    cols = {}
    for sym in symbols:
        try:
            cols[sym] = store.read(sym, "1Day")["close"].iloc[-days:]
        except BtmlError:
            continue
    return pd.DataFrame(cols)


def positions(book: Book, store: ParquetStore) -> list[dict[str, Any]]:
    lots = position_lots(book.fills)
    closes = last_closes(store, [s for s, lot in lots.items() if lot.qty], 1)
    out = []
    for sym, lot in sorted(lots.items()):
        if not lot.qty:
            continue
        last = float(closes[sym].iloc[-1]) if sym in closes else lot.last_fill
        value = lot.qty * last if last is not None else None
        upnl = (last - lot.avg) * lot.qty if last is not None else None
        out.append({"symbol": sym, "qty": lot.qty, "avg_entry_price": lot.avg,
                    "last_price": last, "market_value": value, "unrealized_pnl": upnl,
                    "realized_pnl": lot.realized})  # fmt: skip
    return out


def portfolio(
    book: Book,
    store: ParquetStore,
    starting_equity: float | None,
    pos: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Equity, P&L, exposure and counts; ``pos`` is :func:`positions` if already read (it
    reads the store's closes)."""
    pos = positions(book, store) if pos is None else pos
    realized = sum(lot.realized for lot in position_lots(book.fills).values())
    unrealized = sum(p["unrealized_pnl"] or 0.0 for p in pos)
    gross = sum(abs(p["market_value"] or 0.0) for p in pos)
    equity = starting_equity + realized + unrealized if starting_equity is not None else None
    return {"starting_equity": starting_equity, "equity": equity, "realized_pnl": realized,
            "unrealized_pnl": unrealized, "gross_exposure": gross, "positions": len(pos),
            "orders": len(book.orders), "fills": len(book.fills), "errors": book.errors}  # fmt: skip


def value_at_risk(values: pd.Series, history: pd.DataFrame) -> dict[str, float | None]:
    """One-day 95 % VaR (a positive loss in currency) of holding ``values`` (market value
    per symbol), from the daily returns in ``history``: historical and parametric."""
    if not set(values.index) <= set(history.columns):  # a position without stored daily bars
        return {"historical": None, "parametric": None, "days": 0}
    rets = history[list(values.index)].pct_change().dropna()
    if len(rets) < 20 or values.abs().sum() == 0:
        return {"historical": None, "parametric": None, "days": len(rets)}
    pnl = rets.to_numpy() @ values.to_numpy()
    hist = -float(np.quantile(pnl, 0.05))
    param = Z95 * float(np.std(pnl, ddof=1)) - float(np.mean(pnl))
    return {"historical": max(hist, 0.0), "parametric": max(param, 0.0), "days": len(rets)}


def equity_curve(book: Book, store: ParquetStore, starting_equity: float) -> pd.Series:
    """Equity at each stored daily close since the first fill: cash (the start less what the
    fills paid) plus the positions at that close. Empty without fills or prices."""
    if not book.fills:
        return pd.Series(dtype=float)
    fills = pd.DataFrame([{"symbol": f.symbol, "t": pd.Timestamp(f.timestamp),
                           "q": f.qty if f.side == "buy" else -f.qty, "p": f.price}
                          for f in book.fills])  # fmt: skip
    closes = last_closes(store, sorted(fills["symbol"].unique()), 100_000)
    if closes.empty or not set(fills["symbol"]) <= set(closes.columns):  # no daily prices
        return pd.Series(dtype=float)
    closes = closes[closes.index >= fills["t"].min().floor("D")].ffill()
    if closes.empty:
        return pd.Series(dtype=float)
    day = closes.index.searchsorted(fills["t"], side="left").clip(max=len(closes) - 1)
    fills["day"] = closes.index[day]
    held = fills.pivot_table(index="day", columns="symbol", values="q", aggfunc="sum")
    held = held.reindex(closes.index).fillna(0.0).cumsum()
    paid = (fills["q"] * fills["p"]).groupby(fills["day"]).sum().reindex(closes.index).fillna(0.0)
    value = (held * closes[held.columns].fillna(0.0)).sum(axis=1)
    return (starting_equity - paid.cumsum() + value).rename("equity")


def risk(book: Book, store: ParquetStore, starting_equity: float | None,
         limits: RiskConfig | None = None) -> dict[str, Any]:  # fmt: skip
    """Exposure, daily loss and drawdown against their limits, and the one-day VaR."""
    limits = limits or RiskConfig()
    pos = positions(book, store)
    port = portfolio(book, store, starting_equity, pos)
    equity = port["equity"]
    values = pd.Series({p["symbol"]: p["market_value"] or 0.0 for p in pos}, dtype=float)
    history = last_closes(store, list(values.index), VAR_WINDOW + 1)
    no_var = {"historical": None, "parametric": None, "days": 0}
    var = value_at_risk(values, history) if len(values) else no_var
    curve = equity_curve(book, store, starting_equity) if starting_equity else pd.Series()
    daily = drawdown = None
    if len(curve) >= 1:
        prev = curve.iloc[-2] if len(curve) >= 2 else starting_equity
        daily = max(0.0, -(curve.iloc[-1] - prev) / prev)
        drawdown = float(1 - curve.iloc[-1] / max(curve.max(), starting_equity or 0.0))
    largest = max((abs(v) for v in values), default=0.0) / equity if equity else None
    return {
        "exposure": _limit(port["gross_exposure"] / equity if equity else None, limits.max_gross),
        "daily_loss": _limit(daily, limits.daily_loss_stop),
        "drawdown": _limit(drawdown, limits.max_drawdown),
        "largest_position": _limit(largest, limits.max_position),
        "var_95": var, "equity": equity,
    }  # fmt: skip


def _limit(value: float | None, limit: float) -> dict[str, Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"value": None, "limit": limit, "used": None, "breached": False}
    return {"value": value, "limit": limit, "used": value / limit, "breached": value >= limit}
