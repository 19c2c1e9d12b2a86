"""Operating a live session: Prometheus metrics, alert rules and their outputs, drift.

:mod:`monitoring.monitor` measures a trading session (bars, feed lag, model latency and
errors, orders, positions against the journal, equity, drawdown, daily P&L, model age, NaN
features, drift, signal flips), exports it on ``/metrics`` (:mod:`monitoring.metrics`) and
evaluates the alert rules (:mod:`monitoring.alerts`) whose events go to the log, the
dashboard and webhooks (:mod:`monitoring.outputs`).
"""
