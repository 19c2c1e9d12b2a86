// Price and equity charts (TradingView's lightweight-charts); loss curves (Recharts).
import { useEffect, useRef } from "react";
import { ColorType, createChart, type IChartApi, type SeriesMarker, type Time, type UTCTimestamp } from "lightweight-charts";
import { CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import type { Point } from "../lib/finance";

const COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777"];

function useChart(height: number, build: (chart: IChartApi) => void, deps: unknown[]) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const chart = createChart(el, {
      height,
      width: el.clientWidth,
      layout: { background: { type: ColorType.Solid, color: "white" }, textColor: "#334155" },
      grid: { vertLines: { color: "#f1f5f9" }, horzLines: { color: "#f1f5f9" } },
      timeScale: { timeVisible: false },
    });
    build(chart);
    chart.timeScale().fitContent();
    const resize = new ResizeObserver(() => chart.applyOptions({ width: el.clientWidth }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      chart.remove();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  return ref;
}

/** Several growth curves on one chart (a strategy against its baselines). */
export function EquityChart({ curves, height = 300 }: { curves: Record<string, Point[]>; height?: number }) {
  const names = Object.keys(curves);
  const ref = useChart(
    height,
    (chart) => {
      names.forEach((name, i) => {
        const s = chart.addLineSeries({ color: COLORS[i % COLORS.length], lineWidth: 2, title: name });
        s.setData(curves[name].map((p) => ({ time: p.time as UTCTimestamp, value: p.value })));
      });
    },
    [curves],
  );
  return (
    <div>
      <div ref={ref} className="chart" data-testid="equity-chart" />
      <div className="legend">
        {names.map((n, i) => (
          <span key={n}>
            <i style={{ background: COLORS[i % COLORS.length] }} /> {n}
          </span>
        ))}
      </div>
    </div>
  );
}

export interface Bar {
  time: number;
  open: number;
  high: number;
  low: number;
  close: number;
}
export interface Mark {
  time: number;
  side: "buy" | "sell";
  text: string;
}

/** Candles with fills or signals marked (arrows below for buys, above for sells). */
export function PriceChart({ bars, marks, height = 320 }: { bars: Bar[]; marks: Mark[]; height?: number }) {
  const ref = useChart(
    height,
    (chart) => {
      const s = chart.addCandlestickSeries();
      s.setData(bars.map((b) => ({ ...b, time: b.time as UTCTimestamp })));
      const m: SeriesMarker<Time>[] = [...marks]
        .sort((a, b) => a.time - b.time)
        .map((k) => ({
          time: k.time as UTCTimestamp,
          position: k.side === "buy" ? "belowBar" : "aboveBar",
          color: k.side === "buy" ? "#16a34a" : "#dc2626",
          shape: k.side === "buy" ? "arrowUp" : "arrowDown",
          text: k.text,
        }));
      s.setMarkers(m);
    },
    [bars, marks],
  );
  return <div ref={ref} className="chart" data-testid="price-chart" />;
}

/** Loss per epoch, one line per task. */
export function LossChart({ rows }: { rows: Record<string, number | null>[] }) {
  const keys = rows.length ? Object.keys(rows[0]).filter((k) => k !== "epoch") : [];
  return (
    <div className="chart" data-testid="loss-chart" style={{ height: 300 }}>
      <ResponsiveContainer width="100%" height="100%">
        <LineChart data={rows} margin={{ left: 8, right: 16, top: 8 }}>
          <CartesianGrid stroke="#f1f5f9" />
          <XAxis dataKey="epoch" />
          <YAxis scale="log" domain={["auto", "auto"]} allowDataOverflow />
          <Tooltip />
          <Legend />
          {keys.map((k, i) => (
            <Line key={k} dataKey={k} stroke={COLORS[i % COLORS.length]} dot={false} isAnimationActive={false} />
          ))}
        </LineChart>
      </ResponsiveContainer>
    </div>
  );
}
