import { useCallback, useEffect, useState } from "react";
import { api, errorText } from "@/lib/api";
import { useLiveTables } from "@/lib/useLive";
import { mergeRow, type Run, type RunEvent, type RunWithEvents } from "@/lib/work";
import { when } from "@/components/format";

export default function RunsPage() {
  const [runs, setRuns] = useState<Run[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [open, setOpen] = useState<RunWithEvents | null>(null);

  const load = useCallback(async () => {
    const r = await api.GET("/runs", { params: { query: { limit: 100 } } });
    if (r.data) {
      setRuns(r.data.items);
      setError(null);
    } else setError(errorText(r.error, r.response.status));
  }, []);
  const show = useCallback(async (runId: string) => {
    const r = await api.GET("/runs/{run_id}", { params: { path: { run_id: runId } } });
    if (r.data) setOpen(r.data);
  }, []);
  useEffect(() => { void load(); }, [load]);
  useLiveTables(["agent_runs", "agent_run_events"], (e) => {
    if (e.table === "agent_runs") {
      setRuns((list) => list && mergeRow(list, e.op, e.pk, e.row as Partial<Run> | null));
      setOpen((o) => (o && o.id === e.pk && e.row ? { ...o, ...(e.row as Partial<Run>) } : o));
    } else if (e.row) {
      const ev = e.row as unknown as RunEvent;
      setOpen((o) => (o && o.id === ev.run_id && !(o.events ?? []).some((x) => String(x.id) === String(ev.id))
        ? { ...o, events: [...(o.events ?? []), ev] } : o));
    }
  }, () => { void load(); if (open) void show(open.id); });

  return (
    <section aria-labelledby="runs-title">
      <h1 id="runs-title">Runs</h1>
      {error ? <p role="alert" className="error">{error}</p> : null}
      {runs && runs.length === 0 ? <p>No runs yet.</p> : null}
      <div className="split">
        {runs && runs.length > 0 ? (
          <div className="table-wrap">
            <table>
              <thead>
                <tr><th scope="col">Run</th><th scope="col">Status</th><th scope="col">Tokens in/out</th>
                  <th scope="col">Cost (USD)</th><th scope="col">Started</th></tr>
              </thead>
              <tbody>
                {runs.map((r) => (
                  <tr key={r.id} data-run-id={r.id} aria-selected={open?.id === r.id}>
                    <th scope="row"><button type="button" className="link" onClick={() => void show(r.id)}>
                      {r.id.slice(0, 8)}</button></th>
                    <td><span className={`badge badge-${r.status}`}>{r.status}</span></td>
                    <td>{r.tokens_in} / {r.tokens_out}</td>
                    <td>{r.cost_usd}</td>
                    <td>{when(r.started_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
        {open ? (
          <aside aria-label={`Run ${open.id.slice(0, 8)}`} className="detail">
            <h2>Run {open.id.slice(0, 8)}</h2>
            <p>Status {open.status}; tokens {open.tokens_in} in, {open.tokens_out} out; cost ${open.cost_usd}
              {open.error ? `; error: ${open.error}` : ""}</p>
            <ol className="events">
              {(open.events ?? []).map((ev) => (
                <li key={String(ev.id)}><time>{when(ev.occurred_at)}</time> <strong>{ev.kind}</strong>{" "}
                  <code>{JSON.stringify(ev.payload)}</code></li>
              ))}
            </ol>
          </aside>
        ) : null}
      </div>
    </section>
  );
}
