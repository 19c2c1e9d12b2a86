"""Dashboard benchmark: a real ``btml dashboard`` process over a store with many runs and
symbols, a real headless Chromium, in one run.

Run: .venv/bin/python benchmarks/bench_dashboard.py [--runs 1000] [--symbols 100] [--requests 50]

* API latency of the list resources (``runs`` (a page of 100, filtered too), ``data``, ``models``,
  ``jobs``, ``system/health``; and all 1,000 runs in one page, beyond the goal's scope):
  p50/p95 over ``--requests`` calls each, after one warm-up call (``data`` validates every
  series once, then serves the cached result until a file changes).
* First page render in headless Chromium (Debian's ``chromium``): from navigation to the
  Backtests page's runs table filled with the registry's runs.
* A training epoch's event at the browser: a training job started over the API, the page's own
  WebSocket subscribed to ``training``; the delay from the end of each epoch in the job's
  process (its wall clock) to the message's arrival in the page.
* The service's memory (RSS of the dashboard process, its job processes excluded) at the end.

Prints each figure beside its goal (the ratio measured / goal; below 1 meets it). Writes
nothing but a temporary store. Record the figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests
from playwright.sync_api import sync_playwright

from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from workflows.runs import RunRegistry

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LISTS = (
    "runs",
    "runs?kind=backtest&status=ok",
    "data",
    "models",
    "jobs",
    "system/health",
    "runs?limit=1000",
)


def build_store(root: Path, n_symbols: int, n_runs: int) -> None:
    """``n_symbols`` synthetic series of 500 bars and ``n_runs`` recorded backtest runs."""
    store = ParquetStore(root)
    for frame in generate_market(SyntheticConfig(n_symbols=n_symbols, n_bars=500, seed=1)).values():
        store.write(frame, merge=False)
    with RunRegistry(root) as reg:
        for i in range(n_runs):
            params = {"symbols": [f"SYN{i % n_symbols:03d}"], "baseline": "buyhold"}
            with reg.start("backtest", params) as run:
                run.log_metrics({"sharpe": 0.01 * (i % 100), "total_return": 0.001 * i,
                                 "max_drawdown": -0.1, "final_value": 100_000 + i})  # fmt: skip


def start_dashboard(root: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "BTML_DASHBOARD_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "btml.cli", "--store", str(root), "dashboard", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/session", headers=AUTH, timeout=2).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the dashboard did not start")


def api_latency(base: str, n: int) -> dict[str, tuple[float, float]]:
    """{resource: (p50, p95)} in milliseconds."""
    out = {}
    with requests.Session() as s:
        for path in LISTS:
            s.get(f"{base}/{path}", headers=AUTH, timeout=60).raise_for_status()  # warm-up
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                s.get(f"{base}/{path}", headers=AUTH, timeout=60).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            out[path] = (statistics.median(times), times[int(0.95 * (len(times) - 1))])
    return out


WATCH_TRAINING = """() => new Promise((resolve) => {
  const ws = new WebSocket(`ws://${location.host}/api/v1/ws`);
  window.__epochs = [];
  ws.onopen = () => { ws.send(JSON.stringify({type: "subscribe", data: {topics: ["training"]}})); };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "training" && !m.snapshot) window.__epochs.push({at: Date.now() / 1000, ...m.data});
    if (m.snapshot) resolve(true);
  };
})"""


def browser_figures(url: str, base: str, n_runs: int) -> tuple[float, list[float]]:
    """Seconds to the first filled render of Backtests; each epoch's delay to the page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/settings?token={TOKEN}")  # sets the cookie
        page.wait_for_load_state("networkidle")
        t0 = time.perf_counter()
        page.goto(f"{url}/backtests")
        page.get_by_role("region", name="Runs").locator("tbody tr").nth(
            min(n_runs, 50) - 1
        ).wait_for()
        render = time.perf_counter() - t0
        page.evaluate(WATCH_TRAINING)
        body = {"symbols": ["SYN000", "SYN001"], "arch": "tiny", "epochs": 5, "window": 16}
        job = requests.post(f"{base}/train", headers=AUTH, json=body, timeout=60).json()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = requests.get(f"{base}/jobs/{job['id']}", headers=AUTH, timeout=10).json()
            if state["state"] in ("ok", "failed", "cancelled"):
                break
            time.sleep(0.5)
        time.sleep(0.5)
        epochs: list[dict[str, Any]] = page.evaluate("window.__epochs")
        browser.close()
    return render, [e["at"] - e["ended_at"] for e in epochs if e.get("ended_at")]


def row(name: str, value: float, goal: float, unit: str) -> str:
    return f"| {name} | {value:.1f} {unit} | < {goal:g} {unit} | {value / goal:.2f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    t0 = time.perf_counter()
    build_store(root, args.symbols, args.runs)
    print(
        f"store: {args.symbols} symbols, {args.runs} runs, built in {time.perf_counter() - t0:.1f} s"
    )
    port = 8700 + os.getpid() % 200
    proc = start_dashboard(root, port)
    try:
        url = f"http://127.0.0.1:{port}"
        lat = api_latency(f"{url}/api/v1", args.requests)
        render, delays = browser_figures(url, f"{url}/api/v1", args.runs)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    print("| measure | result | goal | ratio |\n|---|---|---|---|")
    for path, (p50, p95) in lat.items():
        print(row(f"GET /api/v1/{path} p95 (p50 {p50:.1f} ms)", p95, 50, "ms"))
    print(row("first render of Backtests (runs table filled)", render * 1000, 1000, "ms"))
    if delays:
        print(
            row(
                f"training epoch -> browser, worst of {len(delays)}", max(delays) * 1000, 1000, "ms"
            )
        )
    print(row("dashboard process RSS", rss, 300, "MB"))


if __name__ == "__main__":
    main()
