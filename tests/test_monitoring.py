"""Monitoring (issue "operating it"): alert rules refused with their line, the engine's
fire/repeat/resolve, webhooks that fail or hang without blocking anyone, the Slack format,
URLs never logged, /metrics on loopback, drift measured as PSI."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from click.testing import CliRunner

from core.errors import ConfigError
from monitoring.alerts import AlertEngine, AlertEvent, Rule, Webhook, load_rules
from monitoring.drift import DriftTracker, psi, reference
from monitoring.metrics import SessionMetrics
from monitoring.monitor import MonitorConfig, SessionMonitor
from monitoring.outputs import AlertFile, WebhookSender, payload, read_alerts


def _rules(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(text)
    return p


def test_the_shipped_rules_load_and_cover_the_issue_s_alerts() -> None:
    rules = load_rules()
    names = {r.name for r in rules.rules}
    assert {"stale-bars", "stream-disconnected", "position-mismatch", "daily-loss-80",
            "daily-loss-limit", "drawdown-80", "drawdown-limit", "serving-slow",
            "serving-errors", "breaker-open", "model-old", "features-nan", "drift",
            "signal-flips"} <= names  # fmt: skip
    assert rules.webhooks == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rules:\n  - name: a\n    when: no_such_signal > 1\n", "line 3 (rule a): unknown signal 'no_such_signal'"),
        ("rules:\n  - name: a\n    when: feed_lag_bars >> 1\n", "line 3 (rule a): 'when: feed_lag_bars >> 1' is not"),
        ("rules:\n  - name: a\n    when: feed_lag_bars > x\n", "line 3 (rule a): 'when: feed_lag_bars > x' is not"),
        ("rules:\n  - name: a\n    when: feed_lag_bars > 1\n    severity: loud\n", "line 3 (rule a): severity 'loud'"),
        ("rules:\n  - name: a\n    when: feed_lag_bars > 1\n    repeat: soon\n", "duration 'soon'"),
        ("rules:\n  - name: a\n    when: feed_lag_bars > 1\n  - name: a\n    when: breaker_open > 0\n", "rule names repeat: a"),
        ("rules: []\n", "needs a non-empty 'rules' list"),
        ("rules:\n  - name: a\n    when: breaker_open > 0\nwebhooks:\n  - format: json\n", "line 5: a webhook names"),
        ("rules: [\n", "not YAML"),
    ],
)  # fmt: skip
def test_a_bad_rules_file_is_refused_with_its_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match="alert rules") as err:
        load_rules(_rules(tmp_path, body))
    assert message in str(err.value)


def test_btml_trade_refuses_a_bad_rules_file_in_one_line_exit_2(tmp_path: Path) -> None:
    from btml.cli import main

    bad = _rules(tmp_path, "rules:\n  - name: a\n    when: nope > 1\n")
    env = {"APCA_API_KEY_ID": "k", "APCA_API_SECRET_KEY": "s"}
    res = CliRunner().invoke(main, ["--store", str(tmp_path / "store"), "trade", "--model", "m",
                                    "--symbols", "AAPL", "--alert-rules", str(bad)], env=env)  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = [x for x in res.output.splitlines() if x.strip()]
    assert len(line) == 1 and "line 3 (rule a): unknown signal 'nope'" in line[0]


def test_the_engine_fires_once_repeats_on_schedule_and_resolves() -> None:
    engine = AlertEngine((Rule("lag", "feed_lag_bars", ">", 2, "warning", 60.0),))
    states = []
    for t, v in [(0, 1.0), (10, 3.0), (20, 4.0), (75, 5.0), (80, None), (100, 1.0), (110, 1.0)]:
        states += [(t, e.state) for e in engine.evaluate({"feed_lag_bars": v}, float(t))]
    assert states == [(10, "firing"), (75, "repeat"), (100, "resolved")]


class _Hook(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: fails the first ``fail`` requests (HTTP 500), sleeps ``hang``."""

    received: list[Any] = []
    fail = 0
    hang = 0.0

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).hang:
            time.sleep(type(self).hang)
        if type(self).fail > 0:
            type(self).fail -= 1
            self.send_response(500)
            self.end_headers()
            return
        type(self).received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    _Hook.received, _Hook.fail, _Hook.hang = [], 0, 0.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook?token=SECRET-TOKEN"
    server.shutdown()


def _event(state: str = "firing") -> AlertEvent:
    return AlertEvent("breaker", "critical", state, "breaker_open", 1.0, "breaker_open > 0", 0.0)


def _wait(cond: Any, timeout: float = 10.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_failing_webhook_is_retried_in_the_background(hook_server: str, caplog) -> None:
    _Hook.fail = 2
    sender = WebhookSender((Webhook("HOOK", "json"),), "s1", backoff=0.05,
                           environ={"HOOK": hook_server})  # fmt: skip
    t = time.perf_counter()
    sender(_event())
    assert time.perf_counter() - t < 0.05  # never blocks the caller
    assert _wait(lambda: len(_Hook.received) == 1) and not sender.failing
    assert _Hook.received[0]["rule"] == "breaker" and _Hook.received[0]["session"] == "s1"
    sender.close()


def test_a_hanging_webhook_never_blocks_and_raises_one_alert(hook_server: str, caplog) -> None:
    _Hook.hang = 1.0
    sender = WebhookSender((Webhook("HOOK", "slack"),), "s1", timeout=0.2, retries=1,
                           backoff=0.05, environ={"HOOK": hook_server})  # fmt: skip
    monitor = _monitor([sender], webhook_failing=lambda: sender.failing)
    with caplog.at_level(logging.WARNING):
        t = time.perf_counter()
        sender(_event())
        assert time.perf_counter() - t < 0.05
        assert _wait(lambda: sender.failing)
        events = monitor.evaluate() + monitor.evaluate()
    assert [e.rule for e in events if e.state == "firing"].count("webhook-failing") == 1
    assert "not delivered after 2 attempts" in caplog.text and "${HOOK}" in caplog.text
    assert "SECRET-TOKEN" not in caplog.text and "127.0.0.1" not in caplog.text
    sender.close(wait=0.1)


def test_a_webhook_without_its_variable_is_refused_without_the_url() -> None:
    with pytest.raises(ConfigError, match="BTML_NOPE holding the URL is not set"):
        WebhookSender((Webhook("BTML_NOPE"),), "s", environ={})


def test_the_slack_format_is_a_text_message() -> None:
    body = payload(_event("resolved"), "slack", "run-1")
    assert set(body) == {"text"} and "run-1" in body["text"] and "resolved" in body["text"]


def test_the_alerts_file_is_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "monitoring" / "alerts.jsonl"
    out = AlertFile(path, "run-1")
    out(_event())
    out(_event("resolved"))
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [a["state"] for a in read_alerts(path)] == ["firing", "resolved"]


def _monitor(outputs: list[Any] = (), clock: Any = time.time, **kw: Any) -> SessionMonitor:  # type: ignore[assignment]
    cfg = MonitorConfig(interval=60.0, market_open=lambda ts, sym: True, max_daily_loss=0.03,
                        max_drawdown=0.25, **kw.pop("cfg", {}))  # fmt: skip
    return SessionMonitor(cfg, load_rules(), outputs, clock=clock, **kw)


def test_stale_bars_fire_within_two_intervals_and_resolve() -> None:
    now = [1_000_000.0]
    m = _monitor(clock=lambda: now[0])
    m.bar("AAPL", pd.Timestamp(now[0], unit="s", tz="UTC"))
    assert m.evaluate() == []
    now[0] += 121.0  # two minutes and a second without a bar
    assert [e.rule for e in m.evaluate()] == ["stale-bars"]
    m.bar("AAPL", pd.Timestamp(now[0], unit="s", tz="UTC"))
    assert [(e.rule, e.state) for e in m.evaluate()] == [("stale-bars", "resolved")]


def test_losses_and_serving_faults_raise_their_alerts() -> None:
    m = _monitor()
    m.account(100_000.0, 0.025, -0.05)  # 83 % of the 3 % daily limit
    assert [e.rule for e in m.evaluate()] == ["daily-loss-80"]
    m.account(96_900.0, 0.031, -0.05)
    assert [e.rule for e in m.evaluate()] == ["daily-loss-limit"]
    for _ in range(10):
        m.serving(3.0, False, breaker_open=True)
    fired = {e.rule for e in m.evaluate()}
    assert fired == {"serving-slow", "serving-errors", "breaker-open"}


def test_drift_is_the_psi_of_the_live_inputs_against_training() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 2))
    ref = reference(train, ("a", "b"), {"p_up": rng.uniform(size=1000)})
    same, shifted = DriftTracker(ref), DriftTracker(ref)
    for row in rng.normal(size=(300, 2)):
        same.add_row(("a", "b"), row)
        shifted.add_row(("a", "b"), row + np.array([1.0, 0.0]))
    assert same.value() < 0.1 < 0.2 < shifted.value()
    assert shifted.worst()[0] == "features/a"
    assert psi(ref["features"]["a"], train[:, 0]) < 0.01


def test_metrics_are_served_on_loopback(tmp_path: Path) -> None:
    metrics = SessionMetrics()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = metrics.serve(port)
    try:
        metrics.bars.labels("AAPL").inc()
        metrics.latency.observe(0.004)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'btml_bars_total{symbol="AAPL"} 1.0' in text
        assert "btml_serving_latency_seconds_bucket" in text
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_the_grafana_dashboard_reads_only_metrics_the_session_exports() -> None:
    import re

    metrics = SessionMetrics()
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    exported = {m.name + x for m in metrics.registry.collect() for x in suffixes}
    board = json.loads((Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text())
    used = {
        n
        for p in board["panels"]
        for t in p["targets"]
        for n in re.findall(r"btml_[a-z_]+", t["expr"])
    }
    missing = used - exported
    assert used and not missing, missing


def test_stale_bars_never_count_a_closed_market() -> None:
    """Overnight is not lag: a symbol's lag counts from its market's opening."""
    now = [pd.Timestamp("2026-03-02 20:59", tz="UTC").timestamp()]  # Monday, a minute to close
    open_ = {"v": True}
    cfg = MonitorConfig(interval=60.0, market_open=lambda ts, sym: open_["v"],
                        max_daily_loss=0.03, max_drawdown=0.25)  # fmt: skip
    m = SessionMonitor(cfg, load_rules(), clock=lambda: now[0])
    m.bar("AAPL", pd.Timestamp(now[0] + 60, unit="s", tz="UTC"))  # the last bar, 16:00 NY
    open_["v"], now[0] = False, now[0] + 17.5 * 3600  # the night
    assert m.values()["feed_lag_bars"] is None
    open_["v"], now[0] = True, now[0] + 30.0  # 09:30:30 next day, no bar yet
    assert m.values()["feed_lag_bars"] < 1 and m.evaluate() == []
    now[0] += 150.0  # 2.5 minutes into the session without a bar: stale
    assert [e.rule for e in m.evaluate()] == ["stale-bars"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("repeat: 1.5.0m\nrules:\n  - name: a\n    when: breaker_open > 0\n", "duration '1.5.0m'"),
        ("rules:\n  - name: a\n    when: breaker_open > 0\nwebhooks:\n  - url_env: https://hooks.example/T0/SECRET\n", "url_env must name an environment variable"),
    ],
)  # fmt: skip
def test_odd_rule_files_are_refused_without_a_traceback_or_a_secret(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_rules(_rules(tmp_path, body))
    assert message in str(err.value) and "SECRET" not in str(err.value)


def test_a_binary_rules_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    p.write_bytes(b"\xff\xfe\x00rules")
    with pytest.raises(ConfigError, match="not a text"):
        load_rules(p)


def test_one_dead_webhook_keeps_the_failing_flag_when_another_delivers(hook_server: str) -> None:
    sender = WebhookSender((Webhook("DEAD"), Webhook("LIVE")), "s", timeout=0.2, retries=0,
                           backoff=0.01, environ={"DEAD": "http://127.0.0.1:9/x", "LIVE": hook_server})  # fmt: skip
    sender(_event())
    assert _wait(lambda: len(_Hook.received) == 1)
    time.sleep(0.1)
    assert sender.failing  # the dead one still fails though the live one delivered
    sender.close()
