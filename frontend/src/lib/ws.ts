// One WebSocket for the whole page: topics subscribed on demand, reconnects with backoff.
import { useEffect, useRef } from "react";

export type Topic = "jobs" | "training" | "signals" | "fills" | "alerts" | "health";
export interface Message {
  type: Topic | "error" | "pong" | "dropped";
  data: unknown;
  snapshot?: boolean;
}
type Handler = (msg: Message) => void;

class Socket {
  private ws: WebSocket | null = null;
  private handlers = new Map<Topic, Set<Handler>>();
  private retry = 500;
  private timer: number | undefined;
  connected = false;

  on(topic: Topic, fn: Handler): () => void {
    const set = this.handlers.get(topic) ?? new Set();
    set.add(fn);
    this.handlers.set(topic, set);
    this.ensure();
    if (this.connected) this.send({ type: "subscribe", data: { topics: [topic] } });
    return () => {
      set.delete(fn);
    };
  }

  private send(msg: unknown) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  private ensure() {
    if (this.ws || typeof window === "undefined") return;
    const proto = window.location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${window.location.host}/api/v1/ws`);
    this.ws = ws;
    ws.onopen = () => {
      this.connected = true;
      this.retry = 500;
      const topics = [...this.handlers.keys()];
      if (topics.length) this.send({ type: "subscribe", data: { topics } });
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data) as Message;
      this.handlers.get(msg.type as Topic)?.forEach((fn) => fn(msg));
    };
    ws.onclose = () => {
      this.connected = false;
      this.ws = null;
      window.clearTimeout(this.timer);
      this.timer = window.setTimeout(() => this.ensure(), this.retry);
      this.retry = Math.min(this.retry * 2, 10_000);
    };
  }

  reconnect() {
    this.ws?.close();
  }
}

export const socket = new Socket();

/** Call ``fn`` for every message of ``topic`` while the component is mounted. */
export function useTopic(topic: Topic, fn: Handler): void {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => socket.on(topic, (m) => ref.current(m)), [topic]);
}
