import { useEffect, useState, type FormEvent } from "react";
import { Card, ErrorLine, JobLine, Table } from "../components/ui";
import { LossChart } from "../components/charts";
import { useApi } from "../lib/hooks";
import { api } from "../lib/api";
import { num, when } from "../lib/format";
import type { Card as ModelCard, Series } from "../lib/types";
import { useJobs } from "../lib/jobs";
import { useTopic } from "../lib/ws";

type Row = Record<string, number | null>;

/** The first information-coefficient figure of a card's metrics (test split preferred). */
export function pickIc(metrics: Record<string, unknown>): unknown {
  const flat = Object.entries(metrics ?? {}).filter(([, v]) => typeof v === "number");
  const hit = flat.find(([k]) => k.includes("test") && k.includes("ic")) ?? flat.find(([k]) => k.includes("ic"));
  return hit ? hit[1] : null;
}

/** A registry row's ref, with a badge on the version its name alone means. */
function ModelRef({ model }: { model: ModelCard }) {
  return (
    <>
      {model.ref}
      {model.champion ? (
        <>
          {" "}
          <span className="badge ok" data-testid="champion" title={`${model.name} alone means this version (promoted last, else the latest)`}>
            champion
          </span>
        </>
      ) : null}
    </>
  );
}

export default function Training() {
  const models = useApi<{ models: ModelCard[] }>("models");
  const presets = useApi<{ presets: string[] }>("models/presets");
  const data = useApi<{ series: Series[] }>("data?validate_series=false");
  const { jobs, cancel } = useJobs("train");
  const [form, setForm] = useState({ symbols: "", arch: "tiny", name: "", epochs: 10 });
  const [formError, setFormError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false); // the request is being checked by its workflow
  const [runId, setRunId] = useState<string | null>(null);
  const [rows, setRows] = useState<Row[]>([]);
  const [card, setCard] = useState<string | null>(null);
  const cardData = useApi<Record<string, unknown>>(card ? `models/${encodeURIComponent(card)}` : null);

  // the newest training job's run is followed live
  const following = jobs.find((j) => j.run_id)?.run_id ?? null;
  useEffect(() => {
    if (following && following !== runId) setRunId(following);
  }, [following, runId]);
  useEffect(() => {
    if (!runId) return;
    api<{ epochs: Row[] }>(`training/metrics/${runId}`).then((d) => setRows(d.epochs)).catch(() => undefined);
  }, [runId]);
  useTopic("training", (msg) => {
    const d = msg.data as { run_id: string | null; epoch: number; losses: Row } | null;
    if (!d || msg.snapshot) return;
    if (d.run_id && d.run_id !== runId) {
      setRunId(d.run_id);
      setRows([]);
    }
    setRows((prev) => [...prev.filter((r) => r.epoch !== d.epoch), { epoch: d.epoch, ...d.losses }]);
  });
  const finished = jobs.filter((j) => j.state === "ok").length;
  useEffect(() => models.reload(), [finished]); // eslint-disable-line react-hooks/exhaustive-deps

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setFormError(null);
    setBusy(true);
    const symbols = form.symbols.split(",").map((s) => s.trim()).filter(Boolean);
    try {
      await api("train", { method: "POST", json: { symbols, arch: form.arch, name: form.name || null, epochs: form.epochs } });
    } catch (err) {
      setFormError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const symbols = (data.data?.series ?? []).map((s) => s.symbol);
  const list = models.data?.models ?? [];
  return (
    <div className="grid">
      <Card title="Train a model">
        <form onSubmit={submit} className="form">
          <label>
            symbols
            <input value={form.symbols} onChange={(e) => setForm({ ...form, symbols: e.target.value })} placeholder={symbols.slice(0, 3).join(",")} required name="symbols" />
          </label>
          <label>
            preset
            <select value={form.arch} onChange={(e) => setForm({ ...form, arch: e.target.value })} name="arch">
              {(presets.data?.presets ?? ["tiny"]).map((p) => <option key={p}>{p}</option>)}
            </select>
          </label>
          <label>
            name
            <input value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} placeholder="the preset's name" name="name" />
          </label>
          <label>
            epochs
            <input type="number" min={1} value={form.epochs} onChange={(e) => setForm({ ...form, epochs: Number(e.target.value) })} name="epochs" />
          </label>
          <button type="submit" disabled={busy}>
            {busy ? "Checking…" : "Start training"}
          </button>
        </form>
        <ErrorLine error={formError} />
        {jobs.slice(0, 5).map((j) => <JobLine key={j.id} job={j} onCancel={cancel} />)}
      </Card>
      <Card title={runId ? `Loss per task — run ${runId.slice(0, 22)}` : "Loss per task"}>
        {rows.length ? <LossChart rows={rows} /> : <p className="muted">start a training run to see its losses epoch by epoch</p>}
      </Card>
      <Card title="Model registry" wide>
        <ErrorLine error={models.error} />
        <Table
          head={["model", "preset", "symbols", "parameters", "created", "test IC", "trained by run"]}
          rows={list.map((m) => [<ModelRef key="ref" model={m} />, m.arch, m.symbols.join(", "), num(m.parameters), when(m.created_at), num(pickIc(m.metrics)), m.training_run ?? "–"])}
          onRow={(i) => setCard(list[i].ref)}
          selected={(i) => list[i].ref === card}
          empty="no models yet: train one here or with btml train"
        />
      </Card>
      {card && cardData.data ? (
        <Card title={`Model card ${card}`} wide>
          <pre className="json">{JSON.stringify({ ...cardData.data, scaler: "…", model_config: cardData.data.model_config }, null, 2)}</pre>
        </Card>
      ) : null}
    </div>
  );
}
