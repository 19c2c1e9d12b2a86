"""The HTML tearsheet: QuantStats' report of the strategy against a benchmark, then the ML part.

One self-contained file: QuantStats' full HTML report (metrics, equity, drawdowns, monthly
returns) of the strategy's returns against the benchmark (an index feed's or buy-and-hold's
returns), followed by a section on the model: the runs side by side, signal-quality tables, a
calibration chart and a P&L-by-confidence chart (inline SVG at their own size), and a model
card summary. The section sits below QuantStats' two floating columns (it clears them), and
its tables are formatted for reading: percentages with %, drawdown durations in calendar days,
P&L in basis points, no raw pandas or dict output.
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.signal_quality import SignalQuality
from core.errors import DataError


def _naive(r: pd.Series) -> pd.Series:
    r = r.astype(float).fillna(0.0)
    idx = pd.DatetimeIndex(r.index)
    r.index = idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx
    return r


_STYLE = """<style>
#btml-ml{clear:both;max-width:960px;margin:0 auto;padding-top:24px;border-top:1px solid #ccc}
#btml-ml h2{font-size:20px;font-weight:700;margin:0 0 18px}
#btml-ml h3{margin:28px 0 10px}
#btml-ml table{width:auto;min-width:50%;margin:0 0 12px}
#btml-ml td,#btml-ml th{padding:4px 5px 3px 18px;vertical-align:top}
#btml-ml td,#btml-ml td:first-of-type{text-align:right}
#btml-ml tbody th,#btml-ml thead th:first-of-type{text-align:left;padding-left:2px}
#btml-ml tbody th{font-weight:400}
#btml-ml .card td,#btml-ml .card td:first-of-type{text-align:left}
#btml-ml .charts{display:flex;flex-wrap:wrap;gap:24px;margin-top:12px}
#btml-ml .charts div{flex:none}
</style>"""

Fmt = Callable[[Any], str]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def pct(v: Any) -> str:
    """``0.1234`` as ``12.34%``; a dash for missing values."""
    return f"{v:.2%}" if _finite(v) else "-"


def num(v: Any, digits: int = 2) -> str:
    return f"{v:,.{digits}f}" if _finite(v) else "-"


def count(v: Any) -> str:
    return f"{int(v):,}" if _finite(v) else "-"


def days(v: Any) -> str:
    return "-" if not _finite(v) else f"{int(round(v)):,} day" + ("" if round(v) == 1 else "s")


def bps(v: Any) -> str:
    return f"{v * 1e4:,.1f} bps" if _finite(v) else "-"


def plain(v: Any) -> str:
    """A card value as text: lists joined by commas, tables one ``key: value`` per line."""
    if v is None:
        return "-"
    if isinstance(v, Mapping):
        return "<br>".join(f"{html.escape(str(k))}: {plain(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(plain(x) for x in v)
    if isinstance(v, float):
        return num(v, 4)
    if isinstance(v, int) and not isinstance(v, bool):
        return count(v)
    return html.escape(str(v))


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """An HTML table of formatted (escaped) cells; the first column names the row."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header or ())
    body = "".join(
        f"<tr><th>{r[0]}</th>" + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>" for r in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _frame_table(
    df: pd.DataFrame, first: str, columns: Sequence[tuple[str, str, Fmt]], label: Fmt = plain
) -> str:
    """``df`` as a table: its index (through ``label``) under ``first``, then each present
    ``(column, heading, format)``."""
    cols = [c for c in columns if c[0] in df.columns]
    rows = [[label(i), *(f(row[c]) for c, _, f in cols)] for i, row in df.iterrows()]
    return _table([first, *(h for _, h, _ in cols)], rows)


RUN_COLUMNS: tuple[tuple[str, str, Fmt], ...] = (
    ("total_return", "Total return", pct),
    ("cagr", "CAGR", pct),
    ("sharpe", "Sharpe", num),
    ("sortino", "Sortino", num),
    ("max_drawdown", "Max drawdown", pct),
    ("max_drawdown_days", "Longest drawdown", days),
    ("calmar", "Calmar", num),
)


def _bucket(label: Any) -> str:
    """A confidence bucket ``(0.2, 0.4]`` as ``20-40%`` (the lowest edge shown as 0)."""
    edges = [max(0.0, float(x)) for x in re.findall(r"-?\d+(?:\.\d+)?", str(label))]
    if len(edges) != 2:
        return html.escape(str(label))
    return f"{edges[0]:.0%}".rstrip("%") + f"-{edges[1]:.0%}"


def _horizon(h: Any) -> str:
    return f"{h} bar" + ("" if h == 1 else "s")


def _svg(fig: Any, salt: str) -> str:
    """The figure as inline SVG at its own size (QuantStats' CSS stretches every svg)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": salt}):  # ids unique beside QuantStats' charts
        fig.savefig(buf, format="svg", bbox_inches="tight")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    m = re.match(r'<svg[^>]*?width="([^"]+)" height="([^"]+)"', svg)
    size = f"width:{m.group(1)};height:{m.group(2)};" if m else ""
    svg = svg.replace("<svg", f'<svg style="{size}max-width:100%"', 1)
    return f"<div>{svg}</div>"


def _charts(q: SignalQuality) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    if len(q.calibration):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.plot(q.calibration["mean_confidence"], q.calibration["hit_rate"], "o-")
        ax.set(xlabel="mean confidence", ylabel="realised hit rate", title="Confidence calibration")
        out.append(_svg(fig, "btml-calibration"))
        plt.close(fig)
    if len(q.pnl_by_confidence):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        labels = [_bucket(i) for i in q.pnl_by_confidence.index]
        ax.bar(labels, q.pnl_by_confidence["mean_log_return"] * 1e4)
        ax.set(xlabel="confidence bucket", ylabel="bps per decision", title="P&L by confidence")
        out.append(_svg(fig, "btml-pnl"))
        plt.close(fig)
    return f'<div class="charts">{"".join(out)}</div>' if out else ""


HORIZON_COLUMNS: tuple[tuple[str, str, Fmt], ...] = (
    ("n", "Decisions", count),
    ("hit_rate", "Hit rate", pct),
    ("ic", "IC (Spearman)", partial(num, digits=3)),
)
CALIBRATION_COLUMNS: tuple[tuple[str, str, Fmt], ...] = (
    ("n", "Decisions", count),
    ("mean_confidence", "Mean confidence", pct),
    ("hit_rate", "Hit rate", pct),
)
PNL_COLUMNS: tuple[tuple[str, str, Fmt], ...] = (
    ("n", "Positions", count),
    ("mean_log_return", "Mean log return", bps),
)


def _quality(q: SignalQuality) -> list[str]:
    return [
        "<h3>Hit rate and information coefficient by horizon</h3>",
        _frame_table(q.by_horizon, "Horizon", HORIZON_COLUMNS, label=_horizon),
        "<h3>Calibration of confidence</h3>",
        _frame_table(q.calibration, "Confidence", CALIBRATION_COLUMNS, label=_bucket),
        "<h3>P&amp;L by confidence bucket (log return at the label horizon)</h3>",
        _frame_table(q.pnl_by_confidence, "Confidence", PNL_COLUMNS, label=_bucket),
        _charts(q),
    ]


CARD_ROWS: tuple[tuple[str, str, Fmt], ...] = (
    ("name", "name", plain), ("version", "version", plain), ("arch", "architecture", plain),
    ("parameters", "parameters", count), ("window", "window", lambda v: f"{v} bars"),
    ("horizons", "horizons", lambda v: f"{plain(v)} bars"), ("symbols", "symbols", plain),
    ("index", "index", plain), ("timeframe", "timeframe", plain),
    ("date_ranges", "date ranges", lambda v: _ranges(v)),
    ("data_hash", "training data sha256", plain), ("code_version", "code version", plain),
    ("created_at", "created", plain),
)  # fmt: skip


def _card(card: Mapping[str, Any]) -> list[str]:
    rows = [[html.escape(h), f(card[k])] for k, h, f in CARD_ROWS if card.get(k) is not None]
    test = (card.get("metrics") or {}).get("test") or {}
    rows += [[f"test {html.escape(k)}", _metric(k, v)] for k, v in test.items() if _finite(v)]
    return ["<h3>Model card</h3>", _table(None, rows).replace("<table>", '<table class="card">')]


def _metric(name: str, v: float) -> str:
    """A model metric: accuracies as %, counts as integers, the rest to 4 decimals."""
    if name.endswith("accuracy"):
        return pct(v)
    return count(v) if float(v).is_integer() else num(v, 4)


def _ranges(ranges: Mapping[str, Sequence[str]]) -> str:
    """``train: 2004-01-02 to 2010-05-03`` lines, in the order train, val, test."""
    order = {"train": 0, "val": 1, "test": 2}
    keys = sorted(ranges, key=lambda k: (order.get(k, 3), k))
    return "<br>".join(
        f"{html.escape(k)}: {html.escape(str(ranges[k][0])[:10])} to "
        f"{html.escape(str(ranges[k][-1])[:10])}"
        for k in keys
        if ranges[k]
    )


def ml_section(
    signal_quality: SignalQuality | None,
    model_card: Mapping[str, Any] | None,
    runs: pd.DataFrame | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The HTML of the ML section (notes, tables, charts, model card summary), placed below
    QuantStats' floating columns."""
    parts = [_STYLE, '<div id="btml-ml">', "<h2>Model and signal quality (backtrader-ml)</h2>"]
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append(f'<h3>Notes</h3><ul class="notes">{items}</ul>')
    if runs is not None and len(runs):
        cols = RUN_COLUMNS
        if "max_drawdown_days" not in runs.columns:
            bars = ("max_drawdown_duration", "Longest drawdown", lambda v: f"{count(v)} bars")
            cols = (*cols, bars)
        parts += ["<h3>Runs at the same costs</h3>", _frame_table(runs, "Strategy", cols)]
    if signal_quality is not None:
        parts += _quality(signal_quality)
    if model_card:
        parts += _card(model_card)
    parts.append("</div>")
    return "\n".join(parts)


def _quantstats_page(
    qs: Any, returns: pd.Series, bench: pd.Series | None, tmp: str, title: str
) -> str:
    """QuantStats' HTML; a run QuantStats cannot report (a strategy that never traded has
    constant returns, and its benchmark regression fails) gets a plain page saying why."""
    attempts = [bench, None] if bench is not None else [None]
    errors = []
    for b in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qs.reports.html(returns, benchmark=b, output=tmp, title=title)
            return Path(tmp).read_text(encoding="utf-8")
        except (ValueError, ZeroDivisionError, FloatingPointError) as err:
            errors.append(f"{type(err).__name__}: {err}")
    note = "; ".join(errors)
    flat = " (the strategy's returns are constant: it never traded)" if returns.std() == 0 else ""
    return (
        f"<html><head><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>QuantStats could not report this run{flat}: "
        f"{html.escape(note)}</p></body></html>"
    )


def write_tearsheet(
    returns: pd.Series,
    benchmark: pd.Series | None,
    out: str | os.PathLike[str],
    *,
    title: str = "backtrader-ml",
    signal_quality: SignalQuality | None = None,
    model_card: Mapping[str, Any] | None = None,
    runs: pd.DataFrame | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write the tearsheet to ``out`` atomically and return its path; ``notes`` (warnings,
    the entry rule chosen) head the ML section."""
    import quantstats as qs

    if returns is None or len(returns.dropna()) < 2:
        raise DataError("the run has fewer than 2 returns: nothing to report")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    bench = (
        _naive(benchmark).reindex(_naive(returns).index).fillna(0.0)
        if benchmark is not None
        else None
    )
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tearsheet-", suffix=".html")
    os.close(fd)
    try:
        page = _quantstats_page(qs, _naive(returns), bench, tmp, title)
        section = ml_section(signal_quality, model_card, runs, notes)
        cut = page.rfind("</body>")
        page = page[:cut] + section + page[cut:] if cut >= 0 else page + section
        Path(tmp).write_text(page, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is an ordinary file
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out
