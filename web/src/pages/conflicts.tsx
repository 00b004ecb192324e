import { useCallback, useEffect, useState } from "react";
import { api, errorText, type Schemas } from "@/lib/api";
import { useLiveTables } from "@/lib/useLive";
import { when } from "@/components/format";

type Conflict = Schemas["Conflict"];

export default function ConflictsPage() {
  const [items, setItems] = useState<Conflict[] | null>(null);
  const [total, setTotal] = useState(0);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  const load = useCallback(async (after?: string) => {
    const { data, error: err, response } = await api.GET("/conflicts", {
      params: { query: { limit: 50, ...(after ? { cursor: after } : {}) } },
    });
    if (!data) {
      setError(errorText(err, response.status));
      return;
    }
    setError(null);
    setTotal(data.total);
    setCursor(data.next_cursor ?? null);
    setItems((old) => (after && old ? [...old, ...data.items] : data.items));
  }, []);
  useEffect(() => { void load(); }, [load]);
  useLiveTables(["sync_conflicts"], () => void load(), () => void load());

  return (
    <section aria-labelledby="conflicts-title">
      <h1 id="conflicts-title">Sync conflicts <span className="count">({total})</span></h1>
      <p className="muted">Read-only: every version the two-way sync let lose, and rows it could not apply.</p>
      {error ? <p role="alert" className="error">{error}</p> : null}
      {items && items.length === 0 ? <p>No conflicts.</p> : null}
      {items && items.length > 0 ? (
        <div className="table-wrap">
          <table>
            <thead>
              <tr><th scope="col">Detected</th><th scope="col">Table</th><th scope="col">Key</th>
                <th scope="col">Direction</th><th scope="col">Resolution</th><th scope="col">Reason</th>
                <th scope="col">Attempts</th></tr>
            </thead>
            <tbody>
              {items.map((c) => (
                <tr key={c.id}>
                  <td>{when(c.detected_at)}</td><td>{c.table_name}</td><td><code>{c.pk}</code></td>
                  <td>{c.direction}</td><td>{c.resolution}</td><td>{c.reason ?? "-"}</td>
                  <td>{c.attempts}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      {cursor ? <button type="button" onClick={() => void load(cursor)}>Load more</button> : null}
    </section>
  );
}
