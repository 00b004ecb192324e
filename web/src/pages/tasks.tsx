import { useCallback, useEffect, useId, useState, type FormEvent } from "react";
import { api, errorText } from "@/lib/api";
import { useLiveTables } from "@/lib/useLive";
import { mergeRow, OPEN_STATUSES, type Task } from "@/lib/work";
import { when } from "@/components/format";

function newIdempotencyKey(): string {
  return typeof crypto !== "undefined" && "randomUUID" in crypto
    ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

export default function TasksPage() {
  const [tasks, setTasks] = useState<Task[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  // Unknown until the API says otherwise: a 403 on a write hides the forms.
  const [canWrite, setCanWrite] = useState(true);
  const [title, setTitle] = useState("");
  const [priority, setPriority] = useState(3);
  const [busy, setBusy] = useState(false);
  // One key per intended task: a retried submit (double click, a timeout) is the same task.
  const [idemKey, setIdemKey] = useState(newIdempotencyKey);
  const id = useId();

  const load = useCallback(async () => {
    const r = await api.GET("/tasks", { params: { query: { limit: 100 } } });
    if (r.data) {
      setTasks(r.data.items);
      setError(null);
    } else setError(errorText(r.error, r.response.status));
  }, []);
  useEffect(() => { void load(); }, [load]);
  useLiveTables(["tasks", "task_assignments"], (e) => {
    if (e.table === "tasks") {
      setTasks((list) => list && mergeRow(list, e.op, e.pk, e.row as Partial<Task> | null));
    } else if (e.row && typeof e.row.task_id === "string") {
      const taskId = e.row.task_id;
      void api.GET("/tasks/{task_id}", { params: { path: { task_id: taskId } } }).then((r) => {
        if (r.data) setTasks((list) => list && mergeRow(list, "update", taskId, r.data ?? null));
      });
    }
  }, () => void load());

  const create = async (e: FormEvent) => {
    e.preventDefault();
    if (!title.trim()) return;
    setBusy(true);
    let r;
    try {
      r = await api.POST("/tasks", { body: { title: title.trim(), description: "", priority },
                                     params: { header: { "idempotency-key": idemKey } } });
    } catch {
      // No answer (API down, network): the form stays usable, and a retry keeps the same
      // idempotency key, so it cannot make the task twice.
      setNotice(errorText(null));
      return;
    } finally {
      setBusy(false);
    }
    if (r.response.status === 403) setCanWrite(false);
    if (r.data) {
      const task = r.data;
      setTasks((list) => list && mergeRow(list, "insert", task.id, task));
      setNotice(`Created “${task.title}”.`);
      setTitle("");
      setIdemKey(newIdempotencyKey());
    } else setNotice(errorText(r.error, r.response.status));
  };

  const cancel = async (task: Task) => {
    let r;
    try {
      r = await api.POST("/tasks/{task_id}/cancel", { params: { path: { task_id: task.id } } });
    } catch {
      setNotice(errorText(null));
      return;
    }
    if (r.response.status === 403) setCanWrite(false);
    if (r.data) {
      const done = r.data;
      setTasks((list) => list && mergeRow(list, "update", done.id, done));
      setNotice(`Cancelled “${task.title}”.`);
    } else setNotice(errorText(r.error, r.response.status));
  };

  return (
    <section aria-labelledby="tasks-title">
      <h1 id="tasks-title">Tasks</h1>
      {canWrite ? (
        <form className="inline-form" onSubmit={create} aria-label="New task">
          <label htmlFor={`${id}-title`}>Title</label>
          <input id={`${id}-title`} value={title} maxLength={200} required
                 onChange={(e) => setTitle(e.target.value)} />
          <label htmlFor={`${id}-prio`}>Priority</label>
          <select id={`${id}-prio`} value={priority} onChange={(e) => setPriority(Number(e.target.value))}>
            {[1, 2, 3, 4, 5].map((p) => <option key={p} value={p}>{p}</option>)}
          </select>
          <button type="submit" disabled={busy}>Create task</button>
        </form>
      ) : (
        <p className="muted">This key cannot create or cancel tasks (it lacks <code>tasks:write</code>).</p>
      )}
      <p role="status" aria-live="polite" className="notice">{notice}</p>
      {error ? <p role="alert" className="error">{error}</p> : null}
      {tasks && tasks.length === 0 ? <p>No tasks yet.</p> : null}
      {tasks && tasks.length > 0 ? (
        <div className="table-wrap">
          <table>
            <thead>
              <tr><th scope="col">Title</th><th scope="col">Status</th><th scope="col">Priority</th>
                <th scope="col">Agent</th><th scope="col">Created</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
            </thead>
            <tbody>
              {tasks.map((t) => (
                <tr key={t.id} data-task-id={t.id}>
                  <th scope="row">{t.title}</th>
                  <td><span className={`badge badge-${t.status}`} data-testid="task-status">{t.status}</span></td>
                  <td>{t.priority}</td>
                  <td>{t.agent_id ? <code>{t.agent_id.slice(0, 8)}</code> : "-"}</td>
                  <td>{when(t.created_at)}</td>
                  <td>{canWrite && OPEN_STATUSES.has(t.status) ? (
                    <button type="button" className="small" onClick={() => void cancel(t)}
                            aria-label={`Cancel ${t.title}`}>Cancel</button>) : null}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </section>
  );
}
