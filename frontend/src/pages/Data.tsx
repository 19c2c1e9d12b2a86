import { useEffect, useState, type FormEvent } from "react";
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
  const all = useJobs();
  const jobs = all.jobs.filter((j) => j.kind === "import" || j.kind === "download");
  const cancel = all.cancel;
  const [path, setPath] = useState("");
  const [dl, setDl] = useState({ symbols: "", source: "yahoo", start: "2015-01-01" });
  const [formError, setFormError] = useState<string | null>(null);
  const series = list.data?.series ?? [];
  const finished = jobs.filter((j) => j.state === "ok" || j.state === "failed").length;
  useEffect(() => list.reload(), [finished]); // eslint-disable-line react-hooks/exhaustive-deps

  const download = async (e: FormEvent) => {
    e.preventDefault();
    setFormError(null);
    const symbols = dl.symbols.split(",").map((x) => x.trim()).filter(Boolean);
    try {
      await api("data/download", { method: "POST", json: { symbols, source: dl.source, start: dl.start } });
    } catch (err) {
      setFormError((err as Error).message);
    }
  };

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
      <Card title="Download">
        <form onSubmit={download} className="form">
          <label>
            symbols
            <input name="download-symbols" value={dl.symbols} onChange={(e) => setDl({ ...dl, symbols: e.target.value })} placeholder="AAPL,MSFT" required />
          </label>
          <label>
            source
            <select value={dl.source} onChange={(e) => setDl({ ...dl, source: e.target.value })}>
              <option value="yahoo">Yahoo</option>
              <option value="alpaca">Alpaca</option>
              <option value="ccxt">ccxt (crypto)</option>
            </select>
          </label>
          <label>
            from
            <input type="date" value={dl.start} onChange={(e) => setDl({ ...dl, start: e.target.value })} />
          </label>
          <button type="submit">Download</button>
        </form>
        <p className="muted small">only what the store lacks is fetched; a failed symbol leaves the others stored</p>
      </Card>
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
