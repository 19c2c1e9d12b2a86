"""The HTML tearsheet: QuantStats' report of the strategy against a benchmark, then the ML part.

One self-contained file: QuantStats' full HTML report (metrics, equity, drawdowns, monthly
returns) of the strategy's returns against the benchmark (an index feed's or buy-and-hold's
returns), followed by a section on the model: signal-quality tables, a calibration chart and a
P&L-by-confidence chart (inline PNG), the runs side by side, and a model card summary.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from analyzers.signal_quality import SignalQuality
from feeds.errors import DataError


def _naive(r: pd.Series) -> pd.Series:
    r = r.astype(float).fillna(0.0)
    idx = pd.DatetimeIndex(r.index)
    r.index = idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx
    return r


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


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
        out.append(_png(fig))
        plt.close(fig)
    if len(q.pnl_by_confidence):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(q.pnl_by_confidence.index, q.pnl_by_confidence["mean_log_return"] * 1e4)
        ax.set(xlabel="confidence bucket", ylabel="bps per decision", title="P&L by confidence")
        ax.tick_params(axis="x", labelrotation=30)
        out.append(_png(fig))
        plt.close(fig)
    return "".join(out)


def ml_section(
    signal_quality: SignalQuality | None,
    model_card: Mapping[str, Any] | None,
    runs: pd.DataFrame | None = None,
) -> str:
    """The HTML of the ML section (tables, charts, model card summary)."""
    parts = ['<div id="btml-ml" style="max-width:960px;margin:40px auto;font-family:sans-serif">']
    parts.append("<h2>Model and signal quality (backtrader-ml)</h2>")
    if runs is not None and len(runs):
        parts += ["<h3>Runs at the same costs</h3>", runs.to_html(float_format="{:.4f}".format)]
    if signal_quality is not None:
        parts += ["<h3>Hit rate and information coefficient by horizon</h3>",
                  signal_quality.by_horizon.to_html(float_format="{:.4f}".format),
                  "<h3>Calibration of confidence</h3>",
                  signal_quality.calibration.to_html(float_format="{:.4f}".format),
                  "<h3>P&amp;L by confidence bucket (log return at the label horizon)</h3>",
                  signal_quality.pnl_by_confidence.to_html(float_format="{:.5f}".format),
                  _charts(signal_quality)]  # fmt: skip
    if model_card:
        keep = ("name", "version", "arch", "parameters", "window", "horizons", "symbols", "index",
                "timeframe", "date_ranges", "data_hash", "code_version", "created_at")  # fmt: skip
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(model_card.get(k)))}</td></tr>"
            for k in keep
            if k in model_card
        )
        test = (model_card.get("metrics") or {}).get("test") or {}
        rows += "".join(
            f"<tr><th>test {html.escape(k)}</th><td>{v:.4f}</td></tr>"
            for k, v in test.items()
            if isinstance(v, float)
        )
        parts += ["<h3>Model card</h3>", f"<table>{rows}</table>"]
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
) -> Path:
    """Write the tearsheet to ``out`` atomically and return its path."""
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
        section = ml_section(signal_quality, model_card, runs)
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
