"""The WebSocket ``/api/v1/ws``: ``{"type": "subscribe", "data": {"topics": [...]}}`` in,
``{"type": TOPIC, "data": ...}`` out, a snapshot of each topic first."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from webapp.auth import websocket_allowed
from webapp.events import TOPICS, Hub, Subscriber

router = APIRouter()


async def _send_loop(ws: WebSocket, sub: Subscriber) -> None:
    while True:
        msg = await sub.queue.get()
        await ws.send_json(msg)


def _on_message(hub: Hub, sub: Subscriber, msg: Any) -> dict[str, Any] | None:
    """Apply a client message; returns an error message to send back, if any."""
    if not isinstance(msg, dict) or msg.get("type") not in ("subscribe", "unsubscribe", "ping"):
        return {
            "type": "error",
            "data": {"message": "send {type: subscribe|unsubscribe|ping, data}"},
        }
    if msg["type"] == "ping":
        return {"type": "pong", "data": None}
    topics = (msg.get("data") or {}).get("topics") or []
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        return {
            "type": "error",
            "data": {"message": f"unknown topics {unknown}; known: {list(TOPICS)}"},
        }
    if msg["type"] == "unsubscribe":
        sub.topics.difference_update(topics)
        return None
    for topic in topics:
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait({"type": topic, "data": hub.snapshot(topic), "snapshot": True})
        sub.topics.add(topic)
    return None


@router.websocket("/ws")
async def websocket(ws: WebSocket) -> None:
    refused = websocket_allowed(ws)
    if refused is not None:
        await ws.close(code=1008, reason=refused)
        return
    await ws.accept()
    hub: Hub = ws.app.state.hub
    sub = hub.subscribe()
    sender = asyncio.create_task(_send_loop(ws, sub))

    def drop() -> None:  # the client stopped reading: stop queueing for it and close
        hub.unsubscribe(sub)
        sender.cancel()
        asyncio.get_running_loop().create_task(_close(ws))

    sub.on_drop = drop
    try:
        while True:
            reply = _on_message(hub, sub, await ws.receive_json())
            if reply is not None:
                sub.queue.put_nowait(reply)
    except (WebSocketDisconnect, RuntimeError, ValueError, asyncio.QueueFull):
        pass
    finally:
        hub.unsubscribe(sub)
        sender.cancel()


async def _close(ws: WebSocket) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=1008, reason="too slow: messages dropped"), 2.0)
