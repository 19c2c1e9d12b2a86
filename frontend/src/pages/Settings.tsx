import { useState, type FormEvent } from "react";
import { Card, ErrorLine } from "../components/ui";
import { useApi } from "../lib/hooks";
import { login } from "../lib/api";
import { socket } from "../lib/ws";

export function TokenForm({ onDone }: { onDone?: () => void }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (await login(token.trim())) {
      setError(null);
      socket.reconnect();
      onDone?.();
    } else setError("that token is not this dashboard's (see the URL btml dashboard printed, or {store}/dashboard/token)");
  };
  return (
    <form onSubmit={submit} className="form">
      <label>
        access token
        <input type="password" value={token} onChange={(e) => setToken(e.target.value)} name="token" autoComplete="off" />
      </label>
      <button type="submit">Sign in</button>
      <ErrorLine error={error} />
    </form>
  );
}

export default function Settings() {
  const health = useApi<Record<string, unknown>>("system/health");
  return (
    <div className="grid">
      <Card title="System" wide>
        <ErrorLine error={health.error} />
        <pre className="json">{health.data ? JSON.stringify(health.data, null, 2) : "loading…"}</pre>
      </Card>
      <Card title="Access token">
        <p className="muted">
          The token is in the URL <code>btml dashboard</code> printed, in <code>BTML_DASHBOARD_TOKEN</code>, or in the store's{" "}
          <code>dashboard/token</code> file (mode 0600). It is kept in an HttpOnly cookie, never shown here.
        </p>
        <TokenForm />
      </Card>
    </div>
  );
}
