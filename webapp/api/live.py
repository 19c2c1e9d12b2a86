"""``portfolio``, ``positions``, ``orders``, ``fills``, ``signals`` and ``risk``: the live
sessions' journals (see :mod:`webapp.live`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from feeds.store import ParquetStore
from webapp import live
from webapp.api.deps import settings
from workflows.runs import RunRegistry

router = APIRouter(tags=["live"])


def _book(request: Request) -> live.Book:
    return live.read_book(settings(request).journal_paths)


def starting_equity(request: Request) -> float | None:
    """The newest trading session's equity at its start, if one was recorded."""
    s = settings(request)
    try:
        with RunRegistry(s.store, s.db_url) as reg:
            for rec in reg.list("session", limit=20):
                value = rec.metrics.get("starting_equity")
                if value:
                    return float(value)
    except Exception:  # the health endpoint reports the database; here it is only missing data
        return None
    return None


@router.get("/portfolio")
def portfolio(request: Request) -> dict[str, Any]:
    """Equity (the session's start plus realised and unrealised P&L), exposure, counts, and the
    equity at each stored close since the first fill."""
    store, equity0 = ParquetStore(settings(request).store), starting_equity(request)
    book = _book(request)
    out = live.portfolio(book, store, equity0)
    curve = live.equity_curve(book, store, equity0) if equity0 else None
    out["curve"] = ([{"time": int(t.timestamp()), "value": float(v)} for t, v in curve.items()]
                    if curve is not None else [])  # fmt: skip
    return out


@router.get("/positions")
def positions(request: Request) -> dict[str, Any]:
    return {"positions": live.positions(_book(request), ParquetStore(settings(request).store))}


@router.get("/orders")
def orders(request: Request, limit: int = Query(200, ge=1, le=10_000)) -> dict[str, Any]:
    return {"orders": [live.order_dict(o) for o in _book(request).orders[:limit]]}


@router.get("/fills")
def fills(request: Request, limit: int = Query(500, ge=1, le=100_000)) -> dict[str, Any]:
    return {"fills": [live.fill_dict(f) for f in _book(request).fills[-limit:]]}


@router.get("/signals")
def signals(request: Request, limit: int = Query(200, ge=1, le=10_000)) -> dict[str, Any]:
    return {"signals": live.signals(_book(request), limit)}


@router.get("/risk")
def risk(request: Request) -> dict[str, Any]:
    """Exposure, daily loss and drawdown against their limits; historical and parametric VaR."""
    store = ParquetStore(settings(request).store)
    return live.risk(_book(request), store, starting_equity(request))
