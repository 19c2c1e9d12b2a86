// Computations the pages show: P&L of positions, drawdown of a curve, limit usage.

export interface Position {
  symbol: string;
  qty: number;
  avg_entry_price: number;
  last_price: number | null;
  market_value: number | null;
  unrealized_pnl: number | null;
  realized_pnl: number;
}

export interface Point {
  time: number;
  value: number;
}

/** Total unrealised P&L; positions without a price count as unknown (null) only if all are. */
export function totalUnrealized(positions: Position[]): number | null {
  const known = positions.filter((p) => p.unrealized_pnl !== null);
  if (positions.length > 0 && known.length === 0) return null;
  return known.reduce((s, p) => s + (p.unrealized_pnl as number), 0);
}

/** The return of a position against its entry, signed by its side (short gains when price falls). */
export function positionReturn(p: Position): number | null {
  if (p.last_price === null || !p.avg_entry_price) return null;
  return ((p.last_price - p.avg_entry_price) / p.avg_entry_price) * Math.sign(p.qty);
}

/** Largest peak-to-trough fall of a curve, as a positive fraction (0 for an empty curve). */
export function maxDrawdown(curve: Point[]): number {
  let peak = -Infinity;
  let worst = 0;
  for (const { value } of curve) {
    peak = Math.max(peak, value);
    if (peak > 0) worst = Math.max(worst, 1 - value / peak);
  }
  return worst;
}

/** Total return of a growth curve (last over first, less one). */
export function totalReturn(curve: Point[]): number | null {
  if (curve.length < 2 || curve[0].value === 0) return null;
  return curve[curve.length - 1].value / curve[0].value - 1;
}

export type Level = "ok" | "warn" | "breach" | "unknown";

/** How close a risk figure is to its limit: warn from 80 %, breach at 100 %. */
export function limitLevel(used: number | null | undefined): Level {
  if (used === null || used === undefined || !Number.isFinite(used)) return "unknown";
  if (used >= 1) return "breach";
  if (used >= 0.8) return "warn";
  return "ok";
}

/** VaR as a fraction of equity, or null when either is unknown. */
export function varShare(varValue: number | null, equity: number | null): number | null {
  if (varValue === null || equity === null || equity <= 0) return null;
  return varValue / equity;
}

/** The figures of a model signal (``Signal.to_dict()``) the pages show; null when absent. */
export function signalFigures(signal: Record<string, unknown> | null | undefined): {
  pUp: number | null;
  expReturn: number | null;
  confidence: number | null;
} {
  const dir = signal?.direction;
  const rets = signal?.returns;
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  return {
    pUp: Array.isArray(dir) && dir.length === 3 ? num(dir[2]) : num(signal?.prob_up),
    expReturn: Array.isArray(rets) && rets.length ? num(Math.expm1(Number(rets[0]))) : null,
    confidence: num(signal?.confidence),
  };
}
