import type { ReactNode } from "react";
import type { Job } from "../lib/types";
import { duration } from "../lib/format";

export function Card({ title, children, wide }: { title: string; children: ReactNode; wide?: boolean }) {
  return (
    <section className={wide ? "card wide" : "card"} aria-label={title}>
      <h2>{title}</h2>
      {children}
    </section>
  );
}

export function Stat({ label, value, tone }: { label: string; value: string; tone?: string }) {
  return (
    <div className={`stat ${tone ?? ""}`}>
      <div className="stat-label">{label}</div>
      <div className="stat-value" data-testid={`stat-${label}`}>
        {value}
      </div>
    </div>
  );
}

export function ErrorLine({ error }: { error: string | null }) {
  return error ? (
    <p className="error" role="alert">
      {error}
    </p>
  ) : null;
}

export function Table({
  head,
  rows,
  empty,
  onRow,
  selected,
}: {
  head: string[];
  rows: ReactNode[][];
  empty?: string;
  onRow?: (i: number) => void;
  selected?: (i: number) => boolean;
}) {
  if (rows.length === 0) return <p className="muted">{empty ?? "nothing yet"}</p>;
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            {head.map((h) => (
              <th key={h}>{h}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr
              key={i}
              onClick={onRow ? () => onRow(i) : undefined}
              className={`${onRow ? "clickable" : ""} ${selected?.(i) ? "selected" : ""}`}
            >
              {r.map((c, j) => (
                <td key={j}>{c}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function JobLine({ job, onCancel }: { job: Job; onCancel?: (id: string) => void }) {
  const active = job.state === "queued" || job.state === "running";
  return (
    <div className={`job job-${job.state}`} data-testid="job" data-state={job.state}>
      <span className={`badge ${job.state}`}>{job.state}</span> <b>{job.kind}</b>{" "}
      <span className="muted">{job.run_id ?? job.id}</span>{" "}
      {job.progress !== null && active ? <progress value={job.progress} max={1} /> : null}{" "}
      <span className="muted">{duration(job.started_at, job.ended_at)}</span>
      {job.last_log && active ? <div className="muted small">{job.last_log}</div> : null}
      {job.error ? <div className="error small">{job.error}</div> : null}
      {active && onCancel ? (
        <button className="link" onClick={() => onCancel(job.id)}>
          cancel
        </button>
      ) : null}
    </div>
  );
}
