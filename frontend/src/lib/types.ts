export interface Job {
  id: string;
  kind: string;
  params: Record<string, unknown>;
  state: "queued" | "running" | "ok" | "failed" | "cancelled";
  run_id: string | null;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  progress: number | null;
  error: string | null;
  last_log: string | null;
}

export interface RunSummary {
  id: string;
  kind: string;
  status: string;
  started_at: string;
  ended_at: string | null;
  seconds: number | null;
  metrics?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface Series {
  symbol: string;
  asset_class: string;
  timeframe: string;
  rows: number;
  first: string | null;
  last: string | null;
  source: string;
  validation?: { ok: boolean; summary: string };
}

export interface Card {
  ref: string;
  name: string;
  version: number;
  arch: string;
  symbols: string[];
  parameters: number;
  created_at: string;
  training_run: string | null;
  metrics: Record<string, unknown>;
  /** The version its name alone means: the one promoted last, else the latest. */
  champion: boolean;
}

export interface Limit {
  value: number | null;
  limit: number;
  used: number | null;
  breached: boolean;
}

export interface Risk {
  exposure: Limit;
  daily_loss: Limit;
  drawdown: Limit;
  largest_position: Limit;
  var_95: { historical: number | null; parametric: number | null; days: number };
  equity: number | null;
}
