import { useEffect, useState, type FormEvent } from "react";
import { Card, ErrorLine, JobLine, Table } from "../components/ui";
import { EquityChart } from "../components/charts";
import { useApi } from "../lib/hooks";
import { api } from "../lib/api";
import { num, pct, when } from "../lib/format";
import type { Point } from "../lib/finance";
import type { Card as ModelCard, RunSummary, Series } from "../lib/types";
import { useJobs } from "../lib/jobs";

interface Results {
  run: RunSummary;
  metrics: Record<string, unknown>;
  curves: Record<string, Point[]>;
  tearsheet: boolean;
}
interface Compare {
  runs: string[];
  metrics: Record<string, Record<string, unknown>>;
}

const SHOWN = ["final_value", "total_return", "cagr", "sharpe", "sortino", "max_drawdown", "trades", "win_rate", "exposure"];

function label(r: RunSummary): string {
  const p = (r.params ?? {}) as Record<string, unknown>;
  const what = p.model ? `model ${p.model}` : p.baseline ? `baseline ${p.baseline}` : r.kind;
  const syms = Array.isArray(p.symbols) ? (p.symbols as string[]).join(",") : "";
  return `${what} ${syms}`;
}

export default function Backtests() {
  const runs = useApi<{ runs: RunSummary[] }>("runs?kind=backtest&limit=200");
  const wf = useApi<{ runs: RunSummary[] }>("runs?kind=walkforward&limit=50");
  const models = useApi<{ models: ModelCard[] }>("models");
  const data = useApi<{ series: Series[] }>("data?validate_series=false");
  const { jobs, cancel } = useJobs("backtest");
  const [selected, setSelected] = useState<string[]>([]);
  const [form, setForm] = useState({ symbols: "", what: "baseline:buyhold" });
  const [formError, setFormError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false); // the request is being checked by its workflow
  const focus = selected[0] ?? null;
  const results = useApi<Results>(focus ? `backtest/results/${focus}` : null);
  const compare = useApi<Compare>(selected.length > 1 ? `runs/compare?ids=${selected.join(",")}` : null);

  const finished = jobs.filter((j) => j.state === "ok").length;
  const newest = jobs.find((j) => j.state === "ok" && j.run_id)?.run_id ?? null;
  useEffect(() => {
    runs.reload();
    if (newest) setSelected((s) => (s.includes(newest) ? s : [newest, ...s].slice(0, 4)));
  }, [finished]); // eslint-disable-line react-hooks/exhaustive-deps

  const all = [...(runs.data?.runs ?? []), ...(wf.data?.runs ?? [])].sort((a, b) => (a.id < b.id ? 1 : -1));
  const toggle = (id: string) => setSelected((s) => (s.includes(id) ? s.filter((x) => x !== id) : [id, ...s].slice(0, 4)));

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setFormError(null);
    setBusy(true);
    const symbols = form.symbols.split(",").map((s) => s.trim()).filter(Boolean);
    const [kind, value] = form.what.split(/:(.*)/s);
    const body = kind === "baseline" ? { symbols, baseline: value } : { symbols, model: value };
    try {
      await api("backtest", { method: "POST", json: body });
    } catch (err) {
      setFormError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const symbols = (data.data?.series ?? []).map((s) => s.symbol);
  return (
    <div className="grid">
      <Card title="Run a backtest">
        <form onSubmit={submit} className="form">
          <label>
            symbols
            <input name="symbols" value={form.symbols} onChange={(e) => setForm({ ...form, symbols: e.target.value })} placeholder={symbols.slice(0, 3).join(",")} required />
          </label>
          <label>
            strategy
            <select name="strategy" value={form.what} onChange={(e) => setForm({ ...form, what: e.target.value })}>
              <option value="baseline:buyhold">baseline: buy and hold</option>
              <option value="baseline:sma">baseline: SMA crossover</option>
              {(models.data?.models ?? []).map((m) => <option key={m.ref} value={`model:${m.ref}`}>model {m.ref}</option>)}
            </select>
          </label>
          <button type="submit" disabled={busy}>
            {busy ? "Checking…" : "Start backtest"}
          </button>
        </form>
        <ErrorLine error={formError} />
        {jobs.slice(0, 5).map((j) => <JobLine key={j.id} job={j} onCancel={cancel} />)}
      </Card>
      <Card title="Runs">
        <ErrorLine error={runs.error} />
        <p className="muted small">click runs to compare (up to 4); the first is charted</p>
        <Table
          head={["run", "what", "status", "sharpe", "return", "max DD"]}
          rows={all.map((r) => [when(r.started_at), label(r), r.status, num(r.metrics?.sharpe), pct(r.metrics?.total_return as number), pct(r.metrics?.max_drawdown as number)])}
          onRow={(i) => toggle(all[i].id)}
          selected={(i) => selected.includes(all[i].id)}
          empty="no backtests yet"
        />
      </Card>
      {focus ? (
        <Card title={`Equity — ${focus}`} wide>
          <ErrorLine error={results.error} />
          {results.data ? <EquityChart curves={results.data.curves} /> : <p className="muted">loading…</p>}
          {results.data?.tearsheet ? (
            <a href={`/api/v1/backtest/results/${focus}/tearsheet`} target="_blank" rel="noreferrer">
              open the tearsheet
            </a>
          ) : null}
        </Card>
      ) : null}
      {compare.data ? (
        <Card title="Side by side" wide>
          <Table
            head={["metric", ...compare.data.runs.map((r) => r.slice(0, 22))]}
            rows={Object.entries(compare.data.metrics)
              .filter(([k]) => SHOWN.some((s) => k === s || k.endsWith(`_${s}`)))
              .map(([k, v]) => [k, ...compare.data!.runs.map((r) => num(v[r]))])}
          />
        </Card>
      ) : null}
    </div>
  );
}
