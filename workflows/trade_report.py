"""Live against backtest: ``btml trade report --since DATE``.

For every trading session (runs of kind ``session``) started in ``[since, until)``, the same
model and strategy settings are replayed in a backtest over the bars the session's feeds held
(its ``bars.parquet``: the backfilled history, then the live bars; for a model reading an
index, the index the session continued live, ``index.parquet``), traded from the session's
first live decision, and compared with what happened live:

- **signal parity**: the live and the replayed decision of each symbol and bar, joined on the
  bar (a live feed stamps a bar at its close, a backtest at its start), must come from the same
  model version and give the same outputs (the 1-bar predicted return and the probability up,
  within ``tolerance``) where their inputs are the same: the model also reads the position
  held, so parity is tested on the bars flat on both sides; elsewhere the outputs differ as
  far as the positions did (``parity.csv`` has every bar);
- **trades**: order by order, by bar, symbol and side: the orders the session journaled and
  the orders the replayed strategy sent. Both: matched. Only the backtest: *missed* live,
  with the live decision at that bar (its reason, target and the weight it held: a serving
  failure, a risk rule, an order still pending, a position already there). Only live:
  *extra*, with the replayed decision's. A missed order followed within two of that symbol's
  orders by an extra one of the same side is one order sent *late* live;
- **fills**: each journaled order of the session with a fill, against the price the backtest
  assumes (the next bar's open, where it fills market orders): the realised slippage in basis
  points (positive: paid), beside the ``slippage`` the backtest assumes (10 bps by default).

The result is a run of kind ``trade_report`` (depending on the sessions it read) with
``report.html``, ``trades.csv``, ``parity.csv`` and ``fills.csv`` in its folder. Sessions
recorded before sessions kept their bars, or with no live decision, are skipped and named; with
none left the request is refused before anything is recorded.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.backtest import CostConfig
from brokers.alpaca.journal import Journal
from core.errors import ConfigError
from feeds.timeframes import get_timeframe
from strategies.audit import decisions_frame
from workflows.backtest import MLRunConfig, run_model
from workflows.runs import RunRecord, RunRegistry
from workflows.trading import BARS_FILE, DECISIONS_FILE, INDEX_FILE

Log = Callable[[str], None]
KEY = ["bar", "symbol"]


@dataclass(frozen=True)
class SessionComparison:
    """One session against its replay: parity, the trades compared, the fills' slippage."""

    run_id: str
    model: str
    decisions: int
    parity: dict[str, Any]
    trades: pd.DataFrame
    fills: pd.DataFrame
    slippage: dict[str, Any]
    compared: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def lines(self) -> list[str]:
        """The comparison in a few printed lines."""
        p, t, s = self.parity, self.trades, self.slippage
        kinds = t["kind"].value_counts() if len(t) else pd.Series(dtype=int)
        out = [
            f"session {self.run_id} ({self.model}): {self.decisions} live decisions, "
            f"{p['scored']} replayed; signal parity on the {p['joined']} flat on both sides "
            f"(the same inputs): {p['same']}/{p['joined']} (max |d ret_1| "
            f"{p['max_ret_diff']:.2e}, max |d p_up| {p['max_p_diff']:.2e})",
            f"  trades: {int(kinds.get('matched', 0))} matched, {int(kinds.get('late', 0))} "
            f"sent late live, {int(kinds.get('missed', 0))} missed live, "
            f"{int(kinds.get('extra', 0))} extra live",
        ]
        for _, row in t[t["kind"] != "matched"].head(5).iterrows():
            out.append(f"    {row['kind']} {row['symbol']} {row['bar']}: {row['why']}")
        if s["fills"]:
            out.append(
                f"  fills: {s['fills']}, slippage mean {s['mean_bps']:.1f} bps, median "
                f"{s['median_bps']:.1f}, p90 {s['p90_bps']:.1f} (assumed {s['assumed_bps']:.1f}); "
                f"{s['worse_share']:.0%} worse than assumed"
            )
        else:
            out.append("  fills: none in the journal for this session")
        return out


@dataclass(frozen=True)
class TradeReport:
    """A recorded report: its run and one comparison per session compared."""

    run_id: str
    run_dir: Path
    sessions: tuple[SessionComparison, ...]
    skipped: tuple[str, ...]


def _when(text: str | pd.Timestamp, option: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise ConfigError(f"{option} {text!r} is not a date; give e.g. 2026-03-02") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def sessions_since(
    runs: RunRegistry, since: pd.Timestamp, until: pd.Timestamp | None
) -> list[RunRecord]:
    """The finished session runs started in ``[since, until)``, oldest first."""
    out = []
    for rec in runs.list(kind="session", limit=10_000):
        started = pd.Timestamp(rec.started_at)
        started = (
            started.tz_localize("UTC") if started.tzinfo is None else started.tz_convert("UTC")
        )
        if started >= since and (until is None or started < until) and rec.status != "running":
            out.append(rec)
    return sorted(out, key=lambda r: str(r.started_at))


def trade_report(
    store: str | Path,
    since: str | pd.Timestamp,
    *,
    until: str | pd.Timestamp | None = None,
    journal: str | Path | None = None,
    tolerance: float = 1e-5,
    costs: CostConfig | None = None,
    log: Log = print,
    db_url: str | None = None,
) -> TradeReport:
    """Compare every session started in ``[since, until)`` with its replay (module docstring);
    ``journal`` overrides where the sessions' journal is (default: the one each recorded)."""
    store_path = Path(store)
    lo = _when(since, "--since")
    hi = _when(until, "--until") if until is not None else None
    costs = costs or CostConfig()
    with RunRegistry(store_path, db_url) as runs:
        found = sessions_since(runs, lo, hi)
        if not found:
            raise ConfigError(
                f"no trading session started since {lo.date()}; `btml runs list --kind session` "
                "lists them"
            )
        usable, skipped = [], []
        for rec in found:
            folder = rec.dir
            if not (folder / BARS_FILE).exists() or not (folder / DECISIONS_FILE).exists():
                skipped.append(f"{rec.id}: no bars or decisions kept (recorded before they were)")
            else:
                usable.append((rec, folder))
        if not usable:
            raise ConfigError(
                f"none of the {len(found)} sessions since {lo.date()} kept its bars and "
                f"decisions ({'; '.join(skipped[:3])}); only sessions run by this version can "
                "be replayed"
            )
        for rec, _ in usable:  # refused before anything is recorded
            if journal_of(rec.params, journal) is None:
                raise ConfigError(
                    f"session {rec.id}: its journal ({_recorded(rec.params)}) is not found; "
                    "pass it with `btml trade --journal PATH report ...`"
                )
        params = {"since": lo.isoformat(), "until": hi.isoformat() if hi is not None else None,
                  "tolerance": tolerance, "costs": costs.to_dict()}  # fmt: skip
        with runs.start("trade_report", params) as run:
            for rec, _ in usable:
                run.depends_on(rec.id)
            for note in skipped:
                log(f"skipped {note}")
            done = []
            for rec, folder in usable:
                cmp = compare_session(store_path, rec, folder, journal, tolerance, costs, log)
                done.append(cmp)
                for line in cmp.lines():
                    log(line)
            _save(run, done)
            run.log_metrics(_metrics(done))
            log(f"report: {run.dir / 'report.html'}")
    return TradeReport(run.id, run.dir, tuple(done), tuple(skipped))


def compare_session(
    store_path: Path,
    rec: RunRecord,
    folder: Path,
    journal: str | Path | None,
    tolerance: float,
    costs: CostConfig,
    log: Log,
) -> SessionComparison:
    """Replay session ``rec`` (its run folder ``folder``) and compare (module docstring)."""
    p = rec.params
    delta = get_timeframe(str(p["timeframe"])).delta
    bars = pd.read_parquet(folder / BARS_FILE)
    live = pd.read_parquet(folder / DECISIONS_FILE)
    live = live.assign(bar=pd.to_datetime(live["timestamp"], utc=True) - delta)  # close -> start
    frames = {}
    for sym, part in bars.groupby("symbol", sort=False):
        f = part.drop(columns=["symbol"]).sort_index()
        f.attrs = {"symbol": sym, "timeframe": str(p["timeframe"])}
        frames[str(sym)] = f
    first = live["bar"].min()
    ml = MLRunConfig.from_dict({**p["ml"], "inference": "per-bar"})
    index = pd.read_parquet(folder / INDEX_FILE) if (folder / INDEX_FILE).exists() else None
    res, card = run_model(store_path, str(p["model"]), frames, serving="inprocess", start=first,
                          costs=costs, ml=ml, log=lambda _: None, index=index)  # fmt: skip
    replay = decisions_frame(res.strategy.audit if res.strategy is not None else [])
    replay = replay.assign(bar=pd.to_datetime(replay["timestamp"], utc=True))
    compared = live.merge(replay, on=KEY, how="outer", suffixes=("_live", "_replay"))
    parity = _parity(compared, tolerance)
    where = journal_of(p, journal)
    if where is None:  # checked before the report started; gone since
        raise ConfigError(f"session {rec.id}: its journal ({_recorded(p)}) is not found")
    ours = live_orders(p, where, first, live["bar"].max())
    trades = _trades(compared, ours, replay_orders(res.strategy, first))
    fills, slippage = _fills(ours, frames, costs)
    return SessionComparison(rec.id, card.ref, len(live), parity, trades, fills, slippage,
                             compared)  # fmt: skip


def _parity(c: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """Parity where the inputs are the same: the model reads the window and the position
    (its weight, P&L, bars held), so only bars flat on both sides have the same inputs; the
    others differ as far as the live fills differed from the backtest's."""
    scored = c.dropna(subset=["ret_1_live", "ret_1_replay"])
    flat = scored["position_live"].abs().lt(1e-12) & scored["position_replay"].abs().lt(1e-12)
    both = scored[flat]
    d_ret = (both["ret_1_live"] - both["ret_1_replay"]).abs()
    d_p = (both["p_up_live"] - both["p_up_replay"]).abs()
    model = (both["model_live"] == both["model_replay"]) & (
        both["version_live"] == both["version_replay"]
    )
    same = model & (d_ret <= tolerance) & (d_p <= tolerance)
    return {"scored": len(scored), "joined": len(both), "same": int(same.sum()),
            "share": float(same.mean()) if len(both) else float("nan"),
            "same_model": bool(model.all()),
            "max_ret_diff": float(d_ret.max()) if len(both) else 0.0,
            "max_p_diff": float(d_p.max()) if len(both) else 0.0,
            "tolerance": tolerance}  # fmt: skip


def _recorded(p: Mapping[str, Any]) -> str:
    return str((p.get("alpaca") or {}).get("journal") or "none recorded")


def journal_of(p: Mapping[str, Any], journal: str | Path | None) -> str | None:
    """Where session ``p``'s journal is: ``journal`` if given, else the one it recorded (a
    URL as recorded, without its password: pass it again with ``--journal``); None when that
    file does not exist."""
    where = journal or (p.get("alpaca") or {}).get("journal")
    if not where or not (Path(str(where)).exists() or "://" in str(where)):
        return None
    return str(where)


def live_orders(
    p: Mapping[str, Any], where: str, first: pd.Timestamp, last: pd.Timestamp
) -> pd.DataFrame:
    """The orders the session journaled in ``where`` for its decisions of bars ``first ..
    last`` (start-stamped ``bar``, ``symbol``, ``side``, the fill)."""
    strategy = (p.get("alpaca") or {}).get("strategy")
    delta = get_timeframe(str(p["timeframe"])).delta
    rows = []
    with Journal(where) as j:
        for o in j.orders():
            if o.external or o.bar_time is None or (strategy and o.strategy != strategy):
                continue
            bar = pd.Timestamp(o.bar_time) - delta  # the decision's bar, start-stamped
            if first <= bar <= last:
                rows.append({"bar": bar, "symbol": o.symbol, "side": o.side,
                             "client_order_id": o.client_order_id, "status": o.status,
                             "qty": o.filled_qty, "price": o.filled_avg_price})  # fmt: skip
    return pd.DataFrame(rows, columns=["bar", "symbol", "side", "client_order_id", "status",
                                       "qty", "price"])  # fmt: skip


def replay_orders(strategy: Any, first: pd.Timestamp) -> pd.DataFrame:
    """The orders the replayed strategy created from bar ``first`` on (``bar``, ``symbol``,
    ``side``)."""
    import backtrader as bt

    rows = []
    for o in getattr(getattr(strategy, "broker", None), "orders", []):
        bar = pd.Timestamp(bt.num2date(o.created.dt), tz="UTC")
        if bar >= first:
            rows.append({"bar": bar, "symbol": o.data._name,
                         "side": "buy" if o.isbuy() else "sell"})  # fmt: skip
    return pd.DataFrame(rows, columns=["bar", "symbol", "side"])


def _trades(c: pd.DataFrame, live: pd.DataFrame, replay: pd.DataFrame) -> pd.DataFrame:
    """Order by order: both sides (matched), the backtest only (missed live, with the live
    decision's reason), live only (extra, with the replayed decision's reason)."""
    key = ["bar", "symbol", "side"]
    both = live[key].drop_duplicates().merge(replay[key].drop_duplicates(), on=key, how="outer",
                                             indicator="where")  # fmt: skip
    why = c.set_index(KEY)
    rows = []
    for r in both.sort_values(key).itertuples(index=False):
        at = why.loc[(r.bar, r.symbol)] if (r.bar, r.symbol) in why.index else None
        if isinstance(at, pd.DataFrame):
            at = at.iloc[0]
        if r.where == "both":
            kind, reason = "matched", ""
        elif r.where == "right_only":
            kind = "missed"
            reason = ("no live decision at this bar" if at is None or pd.isna(at["target_live"])
                      else _reason(at, "live"))  # fmt: skip
        else:
            kind = "extra"
            reason = ("no replayed decision at this bar"
                      if at is None or pd.isna(at["target_replay"]) else _reason(at, "replay"))  # fmt: skip
        rows.append({"bar": r.bar, "symbol": r.symbol, "side": r.side, "kind": kind,
                     "why": reason})  # fmt: skip
    return _late(pd.DataFrame(rows, columns=["bar", "symbol", "side", "kind", "why"]))


def _late(t: pd.DataFrame, bars: int = 2) -> pd.DataFrame:
    """A missed order and an extra one of the same symbol and side up to ``bars`` orders of
    that symbol later are one order sent late live (a fill that came later than the
    backtest's next open delays the next decision)."""
    t = t.sort_values(["symbol", "bar"]).reset_index(drop=True)
    drop: set[int] = set()
    for i, r in t[t["kind"] == "missed"].iterrows():
        later = t[(t["symbol"] == r["symbol"]) & (t.index > i)].head(bars)
        hit = later[(later["kind"] == "extra") & (later["side"] == r["side"])
                    & ~later.index.isin(list(drop))]  # fmt: skip
        if len(hit):
            j = hit.index[0]
            t.loc[i, ["kind", "why"]] = ["late", f"sent live at {t.loc[j, 'bar']}, after the "
                                         f"backtest's bar ({r['why']})"]  # fmt: skip
            drop.add(j)
    return t.drop(index=list(drop)).sort_values(["bar", "symbol"]).reset_index(drop=True)


def _reason(at: pd.Series, side: str) -> str:
    """What the other side decided at that bar."""
    return (f"{side}: {at[f'reason_{side}']}, target {at[f'target_{side}']:.3f} with "
            f"{at[f'weight_{side}']:.3f} held")  # fmt: skip


def _fills(
    orders: pd.DataFrame, frames: dict[str, pd.DataFrame], costs: CostConfig
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The filled live orders against the next bar's open, in bps (positive: paid)."""
    cols = ["client_order_id", "symbol", "side", "bar", "qty", "price", "reference", "bps"]
    empty = {"fills": 0, "assumed_bps": costs.slippage * 1e4}
    rows = []
    for o in orders.itertuples(index=False):
        f = frames.get(o.symbol)
        if f is None or not o.qty or not o.price or pd.isna(o.price):
            continue
        after = f.index[f.index > o.bar]
        if not len(after):
            continue
        ref = float(f.loc[after[0], "open"])
        sign = 1.0 if o.side == "buy" else -1.0
        rows.append({"client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side,
                     "bar": o.bar, "qty": o.qty, "price": o.price, "reference": ref,
                     "bps": sign * (o.price / ref - 1) * 1e4})  # fmt: skip
    fills = pd.DataFrame(rows, columns=cols)
    if fills.empty:
        return fills, empty
    bps = fills["bps"]
    return fills, {**empty, "fills": len(fills), "mean_bps": float(bps.mean()),
                   "median_bps": float(bps.median()), "p90_bps": float(bps.quantile(0.9)),
                   "worse_share": float((bps > costs.slippage * 1e4).mean())}  # fmt: skip


def _metrics(done: Sequence[SessionComparison]) -> dict[str, Any]:
    joined = sum(c.parity["joined"] for c in done)
    scored = sum(c.parity["scored"] for c in done)
    kinds = pd.concat([c.trades["kind"] for c in done]) if done else pd.Series(dtype=str)
    fills = pd.concat([c.fills["bps"] for c in done if len(c.fills)] or [pd.Series(dtype=float)])
    return {"sessions": len(done), "decisions_compared": scored, "decisions_same_inputs": joined,
            "signal_parity": (sum(c.parity["same"] for c in done) / joined) if joined else None,
            "trades_matched": int((kinds == "matched").sum()),
            "trades_late": int((kinds == "late").sum()),
            "trades_missed": int((kinds == "missed").sum()),
            "trades_extra": int((kinds == "extra").sum()),
            "fills": len(fills),
            "slippage_mean_bps": float(fills.mean()) if len(fills) else None}  # fmt: skip


def _save(run: Any, done: Sequence[SessionComparison]) -> None:
    pd.concat([c.trades.assign(session=c.run_id) for c in done]).to_csv(
        run.add_artifact("trades.csv"), index=False
    )
    pd.concat([c.fills.assign(session=c.run_id) for c in done]).to_csv(
        run.add_artifact("fills.csv"), index=False
    )
    keep = ("bar", "symbol", "position_live", "position_replay", "ret_1_live", "ret_1_replay",
            "p_up_live", "p_up_replay", "target_live", "target_replay", "reason_live",
            "reason_replay")  # fmt: skip
    pd.concat([c.compared[[k for k in keep if k in c.compared]].assign(session=c.run_id)
               for c in done]).to_csv(run.add_artifact("parity.csv"), index=False)  # fmt: skip
    run.add_artifact("report.html").write_text(render_html(done))


def render_html(done: Sequence[SessionComparison]) -> str:
    """One self-contained page: per session its parity, trades and fills tables."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Live against backtest"
             "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
             "</style></head><body><h1>Live against backtest</h1>"]  # fmt: skip
    for c in done:
        parts.append(f"<h2>Session {html.escape(c.run_id)} ({html.escape(c.model)})</h2>")
        parts.append("<p>" + "<br>".join(html.escape(line) for line in c.lines()) + "</p>")
        parts.append("<h3>Trades</h3>" + c.trades.to_html(index=False, na_rep=""))
        parts.append("<h3>Fills against the backtest's price</h3>"
                     + c.fills.to_html(index=False, na_rep=""))  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)
