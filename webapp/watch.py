"""What the dashboard watches while it runs: the live journals (new fills and signals reach the
``fills`` and ``signals`` topics within ``poll_seconds``) and its own health."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from webapp import live
from webapp.events import Hub
from webapp.settings import DashboardSettings


class JournalWatch:
    """Remembers what it has published, so each fill and signal is sent once."""

    def __init__(self, settings: DashboardSettings, hub: Hub) -> None:
        self.settings, self.hub = settings, hub
        self.seen_fills: set[str] = set()
        self.seen_orders: dict[str, str] = {}
        self.first = True

    def poll(self) -> None:
        book = live.read_book(self.settings.journal_paths)
        new_fills = [f for f in book.fills if f.execution_id not in self.seen_fills]
        changed = [o for o in book.orders if self.seen_orders.get(o.client_order_id) != o.status]
        self.seen_fills.update(f.execution_id for f in new_fills)
        self.seen_orders.update({o.client_order_id: o.status for o in changed})
        if self.first:  # what was there at start-up is the snapshot, not news
            self.first = False
            return
        for f in new_fills:
            self.hub.publish("fills", live.fill_dict(f))
        for o in changed:
            if o.signal is not None:
                self.hub.publish("signals", live.signals(live.Book([o], [], []))[0])

    def snapshot_fills(self) -> list[dict[str, Any]]:
        return [live.fill_dict(f) for f in live.read_book(self.settings.journal_paths).fills[-50:]]

    def snapshot_signals(self) -> list[dict[str, Any]]:
        return live.signals(live.read_book(self.settings.journal_paths), 50)


class AlertWatch:
    """The sessions' alerts file (``monitoring.outputs``): new lines reach the ``alerts``
    topic within ``poll_seconds``; the snapshot is the newest 50."""

    def __init__(self, settings: DashboardSettings, hub: Hub) -> None:
        from monitoring.outputs import alerts_path

        self.path, self.hub = alerts_path(settings.store), hub
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def poll(self) -> None:
        import json

        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size < self.offset:  # the file was replaced: start over
            self.offset = 0
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                self.hub.publish("alerts", json.loads(line))

    def snapshot(self) -> list[dict[str, Any]]:
        from monitoring.outputs import read_alerts

        return read_alerts(self.path)


async def watch_loop(watch: JournalWatch | AlertWatch, every: float) -> None:
    """Poll in a worker thread (SQLite reads block) until cancelled."""
    while True:
        with contextlib.suppress(Exception):  # a locked or missing journal: try again next time
            await asyncio.to_thread(watch.poll)
        await asyncio.sleep(every)


def database_status(settings: DashboardSettings) -> dict[str, Any]:
    """The run database: reachable (its URL without password, how many runs) or why not."""
    import sqlalchemy as sa

    from workflows.runs import RunRegistry

    try:
        with RunRegistry(settings.store, settings.db_url) as reg:
            n, url = reg.count(), sa.make_url(reg.db_url)
    except Exception as err:  # any failure is the health answer, not a 500
        return {"ok": False, "error": str(err).splitlines()[0][:300]}
    return {"ok": True, "url": url.render_as_string(hide_password=True), "runs": n}


def health_now(settings: DashboardSettings, running_jobs: int) -> dict[str, Any]:
    """The ``health`` topic's message: the run database reachable, jobs running."""
    db = database_status(settings)
    return {"ok": db["ok"], "database": db, "jobs_running": running_jobs}


async def health_loop(hub: Hub, settings: DashboardSettings, running: Any, every: float) -> None:
    """Publish the health every ``every`` seconds until cancelled."""
    while True:
        with contextlib.suppress(Exception):
            hub.publish("health", await asyncio.to_thread(health_now, settings, running()))
        await asyncio.sleep(every)
