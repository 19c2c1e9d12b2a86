import { useState } from "react";
import { Card, ErrorLine, Stat, Table } from "../components/ui";
import { PriceChart, type Bar, type Mark } from "../components/charts";
import { useApi } from "../lib/hooks";
import { api } from "../lib/api";
import { money, num, pct, when } from "../lib/format";
import { limitLevel, signalFigures, varShare, type Position } from "../lib/finance";
import type { Limit, Risk } from "../lib/types";
import { useTopic } from "../lib/ws";
import { useJobs } from "../lib/jobs";
import { JobLine } from "../components/ui";

interface Signal {
  time: string;
  symbol: string;
  side: string;
  status: string;
  model: string | null;
  signal: Record<string, unknown>;
}
interface Alert {
  rule: string;
  severity: "info" | "warning" | "critical";
  state: "firing" | "repeat" | "resolved";
  message: string;
  signal: string;
  value: number;
  condition: string;
  at: number;
  session?: string;
}
interface Fill {
  execution_id: string;
  symbol: string;
  side: "buy" | "sell";
  qty: number;
  price: number;
  timestamp: string;
}
interface Order {
  client_order_id: string;
  symbol: string;
  side: string;
  qty: number | null;
  status: string;
  filled_qty: number;
  filled_avg_price: number | null;
  created_at: string;
}

function LimitBar({ name, l }: { name: string; l: Limit }) {
  const level = limitLevel(l.used);
  return (
    <div className={`limit ${level}`} data-testid={`limit-${name}`}>
      <span>{name}</span>
      <meter min={0} max={1} low={0.8} high={0.99} optimum={0} value={Math.min(1, l.used ?? 0)} />
      <span>
        {pct(l.value)} of {pct(l.limit, 0)}
      </span>
    </div>
  );
}

export default function Live() {
  const [signals, setSignals] = useState<Signal[]>([]);
  const [fills, setFills] = useState<Fill[]>([]);
  const [alerts, setAlerts] = useState<Alert[]>([]);
  useTopic("alerts", (m) => {
    if (m.snapshot) setAlerts(((m.data as Alert[]) ?? []).slice().reverse());
    else setAlerts((a) => [m.data as Alert, ...a].slice(0, 200));
  });
  useTopic("signals", (m) => {
    if (m.snapshot) setSignals((m.data as Signal[]) ?? []);
    else setSignals((s) => [m.data as Signal, ...s].slice(0, 200));
  });
  useTopic("fills", (m) => {
    if (m.snapshot) setFills((m.data as Fill[]) ?? []);
    else setFills((f) => [...f, m.data as Fill].slice(-500));
  });
  const positions = useApi<{ positions: Position[] }>("positions", 3000);
  const orders = useApi<{ orders: Order[] }>("orders?limit=50", 3000);
  const risk = useApi<Risk>("risk", 5000);
  const { jobs, cancel } = useJobs("kill");
  const [symbol, setSymbol] = useState<string | null>(null);
  const bars = useApi<{ bars: Bar[] }>(symbol ? `data/${encodeURIComponent(symbol)}/bars?limit=300` : null);
  const [kill, setKill] = useState({ open: false, confirm: "", flatten: false, mode: "paper", error: null as string | null });

  const marks: Mark[] = fills
    .filter((f) => f.symbol === symbol)
    .map((f) => ({ time: Math.floor(new Date(f.timestamp).getTime() / 1000), side: f.side, text: `${f.side} ${num(f.qty)}` }));
  const r = risk.data;
  const pos = positions.data?.positions ?? [];

  const doKill = async () => {
    try {
      await api("live/kill", { method: "POST", json: { confirm: kill.confirm, flatten: kill.flatten, mode: kill.mode } });
      setKill({ ...kill, open: false, confirm: "", error: null });
    } catch (err) {
      setKill({ ...kill, error: (err as Error).message });
    }
  };
  return (
    <div className="grid">
      <Card title="Signals (live)">
        <Table
          head={["time", "symbol", "side", "status", "p(up)", "exp. return", "confidence", "model"]}
          rows={signals.slice(0, 30).map((s) => {
            const f = signalFigures(s.signal);
            return [when(s.time), s.symbol, s.side, s.status, pct(f.pUp), pct(f.expReturn, 2), pct(f.confidence, 0), s.model ?? "–"];
          })}
          empty="no signals yet: they appear as a trading session (btml trade) places orders"
        />
      </Card>
      <Card title="Alerts">
        <Table
          head={["time", "severity", "alert", "state", "measured"]}
          rows={alerts.slice(0, 20).map((a) => [
            when(new Date(a.at * 1000).toISOString()),
            <span className={`severity ${a.severity}`} data-testid="alert-severity">{a.severity}</span>,
            a.rule,
            a.state,
            `${num(a.value)} (${a.condition})`,
          ])}
          empty="no alerts: a trading session's rules (btml trade --alert-rules) raise them here"
        />
      </Card>
      <Card title="Risk">
        <ErrorLine error={risk.error} />
        {r ? (
          <>
            <div className="stats">
              <Stat label="Equity" value={money(r.equity)} />
              <Stat label="VaR 95% (hist.)" value={money(r.var_95.historical)} />
              <Stat label="VaR 95% (param.)" value={money(r.var_95.parametric)} />
              <Stat label="VaR / equity" value={pct(varShare(r.var_95.historical, r.equity))} />
            </div>
            <LimitBar name="exposure" l={r.exposure} />
            <LimitBar name="daily loss" l={r.daily_loss} />
            <LimitBar name="drawdown" l={r.drawdown} />
            <LimitBar name="largest position" l={r.largest_position} />
          </>
        ) : null}
        <div className="kill">
          {!kill.open ? (
            <button className="danger" onClick={() => setKill({ ...kill, open: true })}>Kill switch…</button>
          ) : (
            <div role="dialog" aria-label="kill switch">
              <p>Cancel every open order{kill.flatten ? " and close every position" : ""} at Alpaca ({kill.mode}). Type KILL to confirm.</p>
              <select value={kill.mode} onChange={(e) => setKill({ ...kill, mode: e.target.value })}>
                <option value="paper">paper</option>
                <option value="live">live</option>
              </select>
              <label>
                <input type="checkbox" checked={kill.flatten} onChange={(e) => setKill({ ...kill, flatten: e.target.checked })} /> flatten positions
              </label>
              <input aria-label="confirm" value={kill.confirm} onChange={(e) => setKill({ ...kill, confirm: e.target.value })} placeholder="KILL" />
              <button className="danger" disabled={kill.confirm !== "KILL"} onClick={doKill}>Confirm</button>
              <button className="link" onClick={() => setKill({ ...kill, open: false })}>cancel</button>
              <ErrorLine error={kill.error} />
            </div>
          )}
          {jobs.slice(0, 3).map((j) => <JobLine key={j.id} job={j} onCancel={cancel} />)}
        </div>
      </Card>
      <Card title="Positions">
        <Table
          head={["symbol", "qty", "entry", "last", "value", "P&L"]}
          rows={pos.map((p) => [p.symbol, num(p.qty), money(p.avg_entry_price), money(p.last_price), money(p.market_value), money(p.unrealized_pnl)])}
          onRow={(i) => setSymbol(pos[i].symbol)}
          empty="no open positions"
        />
      </Card>
      <Card title="Orders">
        <Table
          head={["created", "symbol", "side", "qty", "status", "filled"]}
          rows={(orders.data?.orders ?? []).map((o) => [when(o.created_at), o.symbol, o.side, num(o.qty), o.status, `${num(o.filled_qty)} @ ${money(o.filled_avg_price)}`])}
          empty="no orders journaled"
        />
      </Card>
      {symbol ? (
        <Card title={`${symbol} with fills`} wide>
          {bars.data ? <PriceChart bars={bars.data.bars} marks={marks} /> : <p className="muted">loading…</p>}
        </Card>
      ) : null}
    </div>
  );
}
