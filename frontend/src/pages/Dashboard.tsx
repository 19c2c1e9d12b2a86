import { Card, ErrorLine, Stat, Table } from "../components/ui";
import { EquityChart } from "../components/charts";
import { useApi } from "../lib/hooks";
import { money, num, pct, when } from "../lib/format";
import { signalFigures, totalUnrealized, type Point, type Position } from "../lib/finance";
import { useJobs } from "../lib/jobs";
import { JobLine } from "../components/ui";

interface Portfolio {
  starting_equity: number | null;
  equity: number | null;
  realized_pnl: number;
  unrealized_pnl: number;
  gross_exposure: number;
  positions: number;
  orders: number;
  fills: number;
  curve: Point[];
  errors: string[];
}
interface Health {
  ok: boolean;
  database: { ok: boolean; runs?: number; error?: string };
  serving: { running: boolean };
  broker: { journals: { name: string }[] };
  jobs: { running: number; max: number };
}
interface Signal {
  time: string;
  symbol: string;
  side: string;
  status: string;
  signal: Record<string, unknown>;
}

export default function Dashboard() {
  const port = useApi<Portfolio>("portfolio", 5000);
  const pos = useApi<{ positions: Position[] }>("positions", 5000);
  const sig = useApi<{ signals: Signal[] }>("signals?limit=10", 5000);
  const health = useApi<Health>("system/health", 10000);
  const { jobs, cancel } = useJobs();
  const p = port.data;
  const h = health.data;
  const positions = pos.data?.positions ?? [];
  return (
    <div className="grid">
      <Card title="Portfolio">
        <ErrorLine error={port.error} />
        <div className="stats">
          <Stat label="Equity" value={money(p?.equity)} />
          <Stat label="Realised P&L" value={money(p?.realized_pnl)} tone={(p?.realized_pnl ?? 0) < 0 ? "neg" : "pos"} />
          <Stat label="Unrealised P&L" value={money(totalUnrealized(positions))} />
          <Stat label="Gross exposure" value={money(p?.gross_exposure)} />
        </div>
        {p && p.curve.length > 1 ? <EquityChart curves={{ equity: p.curve }} height={200} /> : (
          <p className="muted">No live session has filled an order yet (start one with <code>btml trade</code>).</p>
        )}
      </Card>
      <Card title="Health">
        <ErrorLine error={health.error} />
        {h ? (
          <ul className="health">
            <li className={h.database.ok ? "ok" : "bad"}>run database {h.database.ok ? `ok (${h.database.runs} runs)` : h.database.error}</li>
            <li className={h.serving.running ? "ok" : "muted"}>TorchServe {h.serving.running ? "running" : "not running"}</li>
            <li>{h.broker.journals.length} order journal(s)</li>
            <li>jobs {h.jobs.running} of {h.jobs.max} running</li>
          </ul>
        ) : null}
      </Card>
      <Card title="Open positions">
        <Table
          head={["symbol", "qty", "entry", "last", "P&L"]}
          rows={positions.map((x) => [x.symbol, num(x.qty), money(x.avg_entry_price), money(x.last_price), money(x.unrealized_pnl)])}
          empty="no open positions"
        />
      </Card>
      <Card title="Latest signals">
        <Table
          head={["time", "symbol", "side", "status", "p(up)"]}
          rows={(sig.data?.signals ?? []).map((s) => [when(s.time), s.symbol, s.side, s.status, pct(signalFigures(s.signal).pUp)])}
          empty="no signals yet"
        />
      </Card>
      <Card title="Jobs" wide>
        {jobs.length ? jobs.slice(0, 8).map((j) => <JobLine key={j.id} job={j} onCancel={cancel} />) : <p className="muted">no jobs started from this dashboard</p>}
      </Card>
    </div>
  );
}
