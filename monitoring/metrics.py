"""The session's Prometheus metrics, in their own registry, served on a loopback port.

Names (``btml_`` prefix): ``bars_total{symbol}``, ``feed_lag_seconds{symbol}``,
``serving_latency_seconds`` (histogram), ``serving_errors_total``, ``breaker_open``,
``orders_total{status}``, ``position_mismatch``, ``stream_connected``, ``equity``,
``drawdown_ratio``, ``daily_pnl_ratio``, ``model_age_seconds``, ``feature_nan_ratio{symbol}``,
``prediction_drift``, ``signal_flips_total{symbol}``, ``alerts_active{rule,severity}``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SessionMetrics:
    """Every metric of one session (module docstring), registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.bars = Counter("btml_bars", "Live bars received", ["symbol"], registry=r)
        self.feed_lag = Gauge("btml_feed_lag_seconds", "Seconds since the newest bar's end",
                              ["symbol"], registry=r)  # fmt: skip
        self.latency = Histogram("btml_serving_latency_seconds", "Model request latency",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.serving_errors = Counter("btml_serving_errors", "Failed model requests", registry=r)
        self.breaker = Gauge("btml_breaker_open", "1 while the circuit breaker is open", registry=r)
        self.orders = Counter("btml_orders", "Order status changes", ["status"], registry=r)
        self.mismatch = Gauge("btml_position_mismatch", "1 while journal and broker differ",
                              registry=r)  # fmt: skip
        self.stream = Gauge("btml_stream_connected", "1 while the bar stream is connected",
                            registry=r)  # fmt: skip
        self.equity = Gauge("btml_equity", "Account equity", registry=r)
        self.drawdown = Gauge("btml_drawdown_ratio", "Drawdown from the equity peak", registry=r)
        self.daily_pnl = Gauge("btml_daily_pnl_ratio", "The day's P&L as a fraction", registry=r)
        self.model_age = Gauge("btml_model_age_seconds", "Seconds since training", registry=r)
        self.nan = Gauge("btml_feature_nan_ratio", "NaN share of the newest feature row",
                         ["symbol"], registry=r)  # fmt: skip
        self.drift = Gauge("btml_prediction_drift", "Largest PSI against training", registry=r)
        self.flips = Counter("btml_signal_flips", "Direction flips", ["symbol"], registry=r)
        self.alerts = Gauge("btml_alerts_active", "1 while an alert is active",
                            ["rule", "severity"], registry=r)  # fmt: skip

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``host:port`` (loopback by default) in a daemon thread;
        returns the server (``shutdown()`` stops it)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
