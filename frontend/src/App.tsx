import { useEffect, useState } from "react";
import { NavLink, Route, Routes } from "react-router-dom";
import Dashboard from "./pages/Dashboard";
import Data from "./pages/Data";
import Training from "./pages/Training";
import Backtests from "./pages/Backtests";
import Live from "./pages/Live";
import Settings, { TokenForm } from "./pages/Settings";
import { api, onUnauthorized } from "./lib/api";

const PAGES = [
  ["/", "Dashboard"],
  ["/data", "Data"],
  ["/training", "Training"],
  ["/backtests", "Backtests"],
  ["/live", "Live"],
  ["/settings", "Settings"],
] as const;

export default function App() {
  const [auth, setAuth] = useState<"checking" | "ok" | "needed">("checking");
  useEffect(() => {
    api("session").then(() => setAuth("ok")).catch(() => setAuth("needed"));
    return onUnauthorized(() => setAuth("needed"));
  }, []);
  return (
    <div className="app">
      <header>
        <span className="brand">backtrader-ml</span>
        <nav>
          {PAGES.map(([to, name]) => (
            <NavLink key={to} to={to} end={to === "/"}>
              {name}
            </NavLink>
          ))}
        </nav>
      </header>
      <main>
        {auth === "needed" ? (
          <section className="card login" aria-label="sign in">
            <h2>Sign in</h2>
            <TokenForm onDone={() => setAuth("ok")} />
          </section>
        ) : auth === "checking" ? (
          <p className="muted">connecting…</p>
        ) : (
          <Routes>
            <Route path="/" element={<Dashboard />} />
            <Route path="/data" element={<Data />} />
            <Route path="/training" element={<Training />} />
            <Route path="/backtests" element={<Backtests />} />
            <Route path="/live" element={<Live />} />
            <Route path="/settings" element={<Settings />} />
            <Route path="*" element={<p>no such page</p>} />
          </Routes>
        )}
      </main>
    </div>
  );
}
