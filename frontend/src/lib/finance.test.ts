import { limitLevel, maxDrawdown, positionReturn, totalReturn, totalUnrealized, varShare } from "./finance";
import { duration, money, num, pct } from "./format";

const pos = (over: Partial<Parameters<typeof positionReturn>[0]>) => ({
  symbol: "A", qty: 10, avg_entry_price: 100, last_price: 110, market_value: 1100,
  unrealized_pnl: 100, realized_pnl: 0, ...over,
});

describe("P&L", () => {
  it("sums unrealised P&L and keeps unknown apart", () => {
    expect(totalUnrealized([pos({}), pos({ unrealized_pnl: -30 })])).toBe(70);
    expect(totalUnrealized([pos({ unrealized_pnl: null })])).toBeNull();
    expect(totalUnrealized([])).toBe(0);
  });
  it("signs a position's return by its side", () => {
    expect(positionReturn(pos({}))).toBeCloseTo(0.1);
    expect(positionReturn(pos({ qty: -10 }))).toBeCloseTo(-0.1);
    expect(positionReturn(pos({ last_price: null }))).toBeNull();
  });
  it("measures drawdown and total return of a curve", () => {
    const c = [100, 120, 90, 130, 117].map((value, time) => ({ time, value }));
    expect(maxDrawdown(c)).toBeCloseTo(0.25);
    expect(totalReturn(c)).toBeCloseTo(0.17);
    expect(maxDrawdown([])).toBe(0);
    expect(totalReturn([{ time: 0, value: 1 }])).toBeNull();
  });
});

describe("risk display", () => {
  it("grades limit usage", () => {
    expect(limitLevel(0.5)).toBe("ok");
    expect(limitLevel(0.8)).toBe("warn");
    expect(limitLevel(1.0)).toBe("breach");
    expect(limitLevel(null)).toBe("unknown");
  });
  it("shows VaR as a share of equity", () => {
    expect(varShare(2000, 100000)).toBeCloseTo(0.02);
    expect(varShare(null, 100000)).toBeNull();
    expect(varShare(2000, 0)).toBeNull();
  });
});

describe("formatting", () => {
  it("formats money, percentages and numbers", () => {
    expect(money(-1234.5)).toBe("-$1,234.50");
    expect(money(null)).toBe("–");
    expect(pct(0.1234)).toBe("12.3 %");
    expect(num(3)).toBe("3");
    expect(num(0.12345)).toBe("0.123");
    expect(num(NaN)).toBe("–");
  });
  it("formats durations", () => {
    expect(duration("2026-01-01T00:00:00Z", "2026-01-01T00:01:05Z")).toBe("1 min 5 s");
    expect(duration(null, null)).toBe("–");
  });
});

describe("signals", () => {
  it("reads p(up), the first horizon's return and confidence from a signal", async () => {
    const { signalFigures } = await import("./finance");
    const s = signalFigures({ direction: [0.2, 0.3, 0.5], returns: [Math.log(1.01), 0.02], confidence: 0.7 });
    expect(s.pUp).toBe(0.5);
    expect(s.expReturn).toBeCloseTo(0.01);
    expect(s.confidence).toBe(0.7);
    expect(signalFigures(null)).toEqual({ pUp: null, expReturn: null, confidence: null });
    expect(signalFigures({ prob_up: 0.61 }).pUp).toBe(0.61);
  });
});
