import { useCallback, useEffect, useState } from "react";
import { api, errorText, type Schemas } from "@/lib/api";
import { useLiveTables } from "@/lib/useLive";
import { mergeRow } from "@/lib/work";
import { when } from "@/components/format";

type Agent = Schemas["Agent"];

export default function AgentsPage() {
  const [agents, setAgents] = useState<Agent[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async () => {
    const { data, error: err, response } = await api.GET("/agents", { params: { query: { limit: 500 } } });
    if (data) {
      setAgents(data.items);
      setError(null);
    } else setError(errorText(err, response.status));
  }, []);
  useEffect(() => { void load(); }, [load]);
  useLiveTables(["agents"], (e) => {
    setAgents((list) => list && mergeRow(list, e.op, e.pk, e.row as Partial<Agent> | null)
      .sort((a, b) => a.name.localeCompare(b.name)));
  }, () => void load());

  return (
    <section aria-labelledby="agents-title">
      <h1 id="agents-title">Agents {agents ? <span className="count">({agents.length})</span> : null}</h1>
      {error ? <p role="alert" className="error">{error}</p> : null}
      {agents === null && !error ? <p>Loading…</p> : null}
      {agents ? (
        <div className="table-wrap">
          <table>
            <caption className="sr-only">The agents, with their mob aliases and status</caption>
            <thead>
              <tr><th scope="col">Name</th><th scope="col">Mob alias</th><th scope="col">Role</th>
                <th scope="col">Status</th><th scope="col">Updated</th></tr>
            </thead>
            <tbody>
              {agents.map((a) => (
                <tr key={a.id} data-agent-id={a.id}>
                  <th scope="row">{a.name}</th>
                  <td className="alias">{a.mob_alias}</td>
                  <td>{a.role}</td>
                  <td><span className={`badge badge-${a.status}`}>{a.status}</span></td>
                  <td>{when(a.updated_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </section>
  );
}
