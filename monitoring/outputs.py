"""Where alert events go: the log, a JSON-lines file the dashboard tails, and webhooks.

Webhooks are delivered by one background thread from a bounded queue, so a webhook that hangs
or fails never blocks trading: each POST has a timeout, a failed one is retried with
exponential backoff (``retries`` times), and after the last failure ``failing`` is set (the
``webhook_failing`` signal raises one alert about it) until a delivery succeeds again. The URL
comes from the environment variable the rules file names and is never logged; a message names
the variable instead.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import requests

from core.errors import ConfigError
from monitoring.alerts import AlertEvent, Webhook

log = logging.getLogger("btml.alerts")

ALERTS_FILE = "alerts.jsonl"


def alerts_path(store: str | Path) -> Path:
    """The alerts of every session of ``store``, one JSON object per line (0600)."""
    return Path(store) / "monitoring" / ALERTS_FILE


def log_event(event: AlertEvent) -> None:
    (log.info if event.state == "resolved" else log.warning)("alert %s", event.message)


class AlertFile:
    """Appends events to the store's alerts file (created 0600), for the dashboard."""

    def __init__(self, path: Path, session: str) -> None:
        self.path, self.session = path, session
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)

    def __call__(self, event: AlertEvent) -> None:
        line = json.dumps({**event.to_dict(), "session": self.session})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def read_alerts(path: Path, last: int = 50) -> list[dict[str, Any]]:
    """The newest ``last`` events of an alerts file (unreadable lines skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[-last:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def payload(event: AlertEvent, fmt: str, session: str) -> dict[str, Any]:
    """The POST body: the event as JSON, or a Slack incoming-webhook message."""
    if fmt == "slack":
        icon = {
            "firing": ":rotating_light:",
            "repeat": ":warning:",
            "resolved": ":white_check_mark:",
        }
        return {"text": f"{icon[event.state]} btml {session}: {event.message}"}
    return {**event.to_dict(), "session": session}


class WebhookSender:
    """Delivers events to ``hooks`` in the background (module docstring)."""

    def __init__(
        self,
        hooks: tuple[Webhook, ...],
        session: str,
        *,
        timeout: float = 5.0,
        retries: int = 4,
        backoff: float = 1.0,
        environ: dict[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        missing = [h.url_env for h in hooks if not env.get(h.url_env)]
        if missing:
            raise ConfigError(
                f"alert webhooks: the environment variable {', '.join(missing)} holding the URL "
                "is not set; set it or remove the webhook from the rules file"
            )
        self._targets = [(h, env[h.url_env]) for h in hooks]
        self.session, self.timeout, self.retries, self.backoff = session, timeout, retries, backoff
        self.failing = False
        self.delivered = 0
        self._queue: queue.Queue[AlertEvent | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="btml-webhooks", daemon=True)
        self._http = requests.Session()
        if self._targets:
            self._thread.start()

    def __call__(self, event: AlertEvent) -> None:
        if not self._targets:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("alert webhooks: queue full, %s dropped", event.rule)

    def close(self, wait: float = 2.0) -> None:
        if self._targets:
            self._queue.put(None)
            self._thread.join(wait)
        self._http.close()

    def _run(self) -> None:
        failing: dict[str, bool] = {}
        while (event := self._queue.get()) is not None:
            for hook, url in self._targets:
                ok = self._deliver(hook, url, event)
                failing[hook.url_env] = not ok
                self.failing = any(failing.values())  # until every webhook delivers again
                self.delivered += ok

    def _deliver(self, hook: Webhook, url: str, event: AlertEvent) -> bool:
        body = payload(event, hook.format, self.session)
        why = ""
        for attempt in range(self.retries + 1):
            try:
                r = self._http.post(url, json=body, timeout=self.timeout)
                if r.status_code < 300:
                    return True
                why = f"HTTP {r.status_code}"
            except requests.RequestException as err:
                why = type(err).__name__
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        log.warning("alert webhook ${%s}: %s not delivered after %d attempts (%s)",
                    hook.url_env, event.rule, self.retries + 1, why)  # fmt: skip
        return False
