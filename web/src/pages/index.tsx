import Link from "next/link";
import { useCallback, useEffect, useState } from "react";
import { api, errorText, type Schemas } from "@/lib/api";
import { useLiveTables } from "@/lib/useLive";
import { seconds, when } from "@/components/format";

type Health = Schemas["Health"];
type PublicHealth = Schemas["PublicHealth"];

function isDetailed(h: Health | PublicHealth): h is Health {
  return "version" in h;
}

/** The overview: /health (engine, migrations, sync lag against its limit) and /conflicts. */
export default function Overview() {
  const [health, setHealth] = useState<Health | PublicHealth | null>(null);
  const [conflicts, setConflicts] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [rendered, setRendered] = useState<Date | null>(null);

  const load = useCallback(async () => {
    const [h, c] = await Promise.all([
      api.GET("/health"),
      api.GET("/conflicts", { params: { query: { limit: 1 } } }),
    ]);
    // /health answers 503 with the same body while the database is down: show it.
    const body = (h.data ?? h.error) as Health | PublicHealth | undefined;
    if (body && "status" in body) setHealth(body);
    setError(body && "status" in body ? null : errorText(h.error, h.response.status));
    if (c.data) setConflicts(c.data.total);
    setRendered(new Date());
  }, []);
  useEffect(() => {
    void load();
    const timer = setInterval(() => void load(), 15_000); // lag grows with time, not with events
    return () => clearInterval(timer);
  }, [load]);
  useLiveTables(["sync_state", "sync_conflicts"], () => void load(), () => void load());

  const detailed = health && isDetailed(health) ? health : null;
  const sync = detailed?.components.sync ?? null;
  const migrations = detailed?.components.migrations ?? null;
  return (
    <section aria-labelledby="overview-title" data-rendered={rendered ? "yes" : "no"}>
      <h1 id="overview-title">Overview</h1>
      {error ? <p role="alert" className="error">{error}</p> : null}
      <dl className="cards">
        <div><dt>API health</dt><dd data-testid="health-status">{health?.status ?? "-"}</dd></div>
        <div><dt>Database engine</dt><dd data-testid="engine">{health?.components.database ?? "-"}</dd></div>
        <div><dt>Migrations</dt>
          <dd data-testid="migrations">{migrations ? `${migrations.applied}/${migrations.total}` : "-"}</dd></div>
        <div><dt>Max sync lag</dt>
          <dd>{sync ? `${seconds(sync.max_lag_seconds)} (limit ${sync.lag_limit_seconds} s)` : "-"}</dd></div>
        <div><dt>Conflicts</dt><dd><Link href="/conflicts/">{conflicts ?? "-"}</Link></dd></div>
      </dl>
      {health && !detailed ? (
        <p className="muted">This key lacks the scope <code>health:detail</code>: migrations and sync lag are hidden.</p>
      ) : null}
      {detailed && detailed.problems.length > 0 ? (
        <ul className="problems" aria-label="Problems">
          {detailed.problems.map((p) => <li key={p}>{p}</li>)}
        </ul>
      ) : null}
      {sync ? (
        <>
          <h2>Sync lag per table and direction</h2>
          <div className="table-wrap">
            <table>
              <thead>
                <tr><th scope="col">Table</th><th scope="col">Direction</th><th scope="col">Lag</th>
                  <th scope="col">Last sync</th><th scope="col">Pending</th><th scope="col">Error</th></tr>
              </thead>
              <tbody>
                {sync.tables.map((t) => {
                  const over = t.lag_seconds === null || t.lag_seconds > sync.lag_limit_seconds;
                  return (
                    <tr key={`${t.table}-${t.direction}`} className={over ? "over" : undefined}>
                      <th scope="row">{t.table}</th>
                      <td>{t.direction.replaceAll("_", " ")}</td>
                      <td>{seconds(t.lag_seconds)} {over ? <strong>over {sync.lag_limit_seconds} s</strong> : null}</td>
                      <td>{when(t.last_sync_at)}</td>
                      <td>{t.pending}</td>
                      <td>{t.last_error ?? "-"}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </>
      ) : null}
    </section>
  );
}
