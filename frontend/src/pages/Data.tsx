import { useState, type FormEvent } from "react";
import { Card, ErrorLine, JobLine, Table } from "../components/ui";
import { PriceChart, type Bar } from "../components/charts";
import { useApi } from "../lib/hooks";
import { api } from "../lib/api";
import { num, when } from "../lib/format";
import type { Series } from "../lib/types";
import { useJobs } from "../lib/jobs";

export default function Data() {
  const list = useApi<{ series: Series[]; errors: string[] }>("data");
  const [symbol, setSymbol] = useState<string | null>(null);
  const bars = useApi<{ bars: Bar[] }>(symbol ? `data/${encodeURIComponent(symbol)}/bars?limit=500` : null);
  const { jobs, cancel } = useJobs("import");
  const [path, setPath] = useState("");
  const [formError, setFormError] = useState<string | null>(null);
  const series = list.data?.series ?? [];

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setFormError(null);
    try {
      await api("data/import", { method: "POST", json: { path } });
    } catch (err) {
      setFormError((err as Error).message);
    }
  };
  return (
    <div className="grid">
      <Card title="Stored series" wide>
        <ErrorLine error={list.error} />
        {(list.data?.errors ?? []).map((e) => <p key={e} className="error">{e}</p>)}
        <Table
          head={["symbol", "class", "timeframe", "rows", "first", "last", "source", "check"]}
          rows={series.map((s) => [
            s.symbol, s.asset_class, s.timeframe, num(s.rows), when(s.first).slice(0, 10), when(s.last).slice(0, 10), s.source,
            s.validation ? <span className={s.validation.ok ? "ok" : "bad"} title={s.validation.summary}>{s.validation.ok ? "ok" : "warning"}</span> : "–",
          ])}
          onRow={(i) => setSymbol(series[i].symbol)}
          selected={(i) => series[i].symbol === symbol}
          empty="the store is empty: btml data download, btml data import or btml data synth"
        />
      </Card>
      {symbol ? (
        <Card title={`${symbol} price`} wide>
          <ErrorLine error={bars.error} />
          {bars.data ? <PriceChart bars={bars.data.bars} marks={[]} /> : <p className="muted">loading…</p>}
        </Card>
      ) : null}
      <Card title="Import a CSV file">
        <form onSubmit={submit} className="form">
          <label>
            file on the dashboard's machine
            <input value={path} onChange={(e) => setPath(e.target.value)} placeholder="/home/me/prices.csv" required />
          </label>
          <button type="submit">Import</button>
        </form>
        <ErrorLine error={formError} />
        {jobs.map((j) => <JobLine key={j.id} job={j} onCancel={cancel} />)}
      </Card>
    </div>
  );
}
