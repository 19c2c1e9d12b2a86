"""Alert rules from a file, and the engine that fires, repeats and resolves them.

A rules file (YAML; the defaults ship as ``monitoring/default_alerts.yaml``, ``btml trade
--alert-rules FILE`` replaces them)::

    repeat: 30m                 # default repeat interval while an alert stays active
    rules:
      - name: stale-bars
        when: feed_lag_bars > 2
        severity: warning       # info | warning | critical
        repeat: 15m             # optional, this rule's own
    webhooks:
      - url_env: BTML_ALERT_WEBHOOK   # the URL is read from this environment variable
        format: json                  # json | slack

``when`` is ``<signal> <op> <number>`` with ``op`` one of ``> >= < <= == !=`` and ``signal``
one of :data:`SIGNALS` (what the session monitor measures). A rule *fires* once when its
condition starts to hold, *repeats* every ``repeat`` while it holds, and *resolves* when it stops;
a signal not measured yet (``None``) leaves the rule as it is. A file with an unknown signal, a
bad operator, threshold, severity or duration is refused at start with its line named.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError

DEFAULT_RULES = Path(__file__).with_name("default_alerts.yaml")

SIGNALS: dict[str, str] = {
    "feed_lag_bars": "bar intervals since the newest bar of the most late symbol (market hours)",
    "stream_connected": "1 while the market-data stream is connected, else 0",
    "position_mismatch": "1 while the journal's positions differ from the broker's, else 0",
    "daily_loss_limit_ratio": "the day's loss as a share of max_daily_loss (1 = limit reached)",
    "drawdown_limit_ratio": "the drawdown as a share of max_drawdown (1 = limit reached)",
    "serving_p95_seconds": "95th percentile of the last 20 model requests' latency",
    "serving_error_ratio": "share of the last 20 model requests that failed",
    "breaker_open": "1 while the model client's circuit breaker is open, else 0",
    "model_age_days": "days since the model was trained",
    "feature_nan_ratio": "share of NaN features in the newest row of the worst symbol",
    "prediction_drift": "largest PSI of the live inputs and outputs against training",
    "signal_flip_ratio": "share of the last 50 decisions whose direction flipped (worst symbol)",
    "webhook_failing": "1 while the newest webhook delivery failed after its retries, else 0",
}
SEVERITIES = ("info", "warning", "critical")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_WHEN = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.eE+-]+)\s*$")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Rule:
    name: str
    signal: str
    op: str
    threshold: float
    severity: str = "warning"
    repeat_seconds: float = 1800.0

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    @property
    def condition(self) -> str:
        return f"{self.signal} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Webhook:
    """Where alerts are POSTed: the URL is read from ``url_env`` (never logged)."""

    url_env: str
    format: str = "json"


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    webhooks: tuple[Webhook, ...] = ()


@dataclass(frozen=True)
class AlertEvent:
    """A rule that fired, repeats while active, or resolved."""

    rule: str
    severity: str
    state: str  # firing | repeat | resolved
    signal: str
    value: float
    condition: str
    at: float  # epoch seconds

    @property
    def message(self) -> str:
        verb = {"firing": "FIRING", "repeat": "still firing", "resolved": "resolved"}[self.state]
        return f"[{self.severity}] {self.rule} {verb}: {self.signal} = {self.value:.4g} ({self.condition})"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "severity": self.severity, "state": self.state,
                "signal": self.signal, "value": self.value, "condition": self.condition,
                "at": self.at, "message": self.message}  # fmt: skip


def parse_duration(text: Any, where: str) -> float:
    """``"30m"`` -> 1800.0 (s, m, h, d; a bare number is seconds)."""
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{where}: duration {text!r} is not like 30s, 15m, 2h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The rules of ``path`` (default: the shipped defaults), checked (module docstring)."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_RULES
    try:
        text = path.read_text()
        root = yaml.compose(text)
    except OSError as err:
        raise ConfigError(f"alert rules {path}: cannot read it ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"alert rules {path}: not a text (UTF-8) file") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"alert rules {path}: not YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"alert rules {path}: expected a mapping with a 'rules' list")
    top = _node_map(root)
    repeat = (
        parse_duration(_scalar(top["repeat"]), f"{path} line {_line(top['repeat'])}")
        if "repeat" in top
        else 1800.0
    )
    rules_node = top.get("rules")
    if not isinstance(rules_node, yaml.SequenceNode) or not rules_node.value:
        raise ConfigError(f"alert rules {path}: needs a non-empty 'rules' list")
    rules = [_rule(node, path, repeat) for node in rules_node.value]
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"alert rules {path}: rule names repeat: {', '.join(dupes)}")
    hooks = top.get("webhooks")
    webhooks = (
        [_webhook(n, path) for n in hooks.value] if isinstance(hooks, yaml.SequenceNode) else []
    )
    return RuleSet(tuple(rules), tuple(webhooks))


def _node_map(node: Any) -> dict[str, Any]:
    return {str(k.value): v for k, v in node.value}


def _scalar(node: Any) -> str:
    return str(getattr(node, "value", ""))


def _line(node: Any) -> int:
    return int(node.start_mark.line) + 1


def _rule(node: Any, path: Path, repeat: float) -> Rule:
    import yaml

    where = f"alert rules {path} line {_line(node)}"
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{where}: a rule is a mapping with name, when and severity")
    f = _node_map(node)
    unknown = sorted(set(f) - {"name", "when", "severity", "repeat"})
    if unknown or "name" not in f or "when" not in f:
        raise ConfigError(f"{where}: a rule has name, when, severity and repeat (got {sorted(f)})")
    name, when = _scalar(f["name"]), _scalar(f["when"])
    where = f"alert rules {path} line {_line(f['when'])} (rule {name})"
    m = _WHEN.match(when)
    if not m:
        raise ConfigError(
            f"{where}: 'when: {when}' is not '<signal> <op> <number>' (op: > >= < <= == !=)"
        )
    signal, op, number = m.groups()
    if signal not in SIGNALS:
        raise ConfigError(f"{where}: unknown signal {signal!r}; known: {', '.join(SIGNALS)}")
    try:
        threshold = float(number)
    except ValueError as err:
        raise ConfigError(f"{where}: threshold {number!r} is not a number") from err
    severity = _scalar(f["severity"]) if "severity" in f else "warning"
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    rep = parse_duration(_scalar(f["repeat"]), where) if "repeat" in f else repeat
    return Rule(name, signal, op, threshold, severity, rep)


def _webhook(node: Any, path: Path) -> Webhook:
    where = f"alert rules {path} line {_line(node)}"
    f = _node_map(node) if hasattr(node, "value") and isinstance(node.value, list) else {}
    if "url_env" not in f:
        raise ConfigError(
            f"{where}: a webhook names the environment variable holding its URL (url_env)"
        )
    if not _ENV_NAME.match(_scalar(f["url_env"])):
        raise ConfigError(
            f"{where}: url_env must name an environment variable (letters, digits, _), not "
            "hold the URL itself: a webhook's URL is a secret"
        )
    fmt = _scalar(f["format"]) if "format" in f else "json"
    if fmt not in ("json", "slack"):
        raise ConfigError(f"{where}: webhook format {fmt!r} is not json or slack")
    return Webhook(_scalar(f["url_env"]), fmt)


@dataclass
class _Active:
    since: float
    last_sent: float


@dataclass
class AlertEngine:
    """Evaluates ``rules`` on measured signals; remembers which alerts are active."""

    rules: tuple[Rule, ...]
    active: dict[str, _Active] = field(default_factory=dict)

    def evaluate(self, values: Mapping[str, float | None], now: float) -> list[AlertEvent]:
        """The events of this evaluation: new alerts, repeats due, resolutions."""
        events = []
        for rule in self.rules:
            value = values.get(rule.signal)
            if value is None:
                continue
            on = rule.holds(float(value))
            mine = self.active.get(rule.name)
            state = None
            if on and mine is None:
                self.active[rule.name] = _Active(now, now)
                state = "firing"
            elif on and mine is not None and now - mine.last_sent >= rule.repeat_seconds:
                mine.last_sent = now
                state = "repeat"
            elif not on and mine is not None:
                del self.active[rule.name]
                state = "resolved"
            if state:
                events.append(AlertEvent(rule.name, rule.severity, state, rule.signal,
                                         float(value), rule.condition, now))  # fmt: skip
        return events
