// Tasks and runs (the API's work routes). Typed by the shapes agreed for them; the requests go
// through the same authenticated fetch as the generated client.
import { clearKey, getKey } from "./session";
import { SIGNED_OUT } from "./api";

export interface Task {
  id: string;
  title: string;
  description: string;
  status: "queued" | "assigned" | "running" | "done" | "failed" | "cancelled";
  priority: number;
  requested_by: string;
  payload: Record<string, unknown>;
  agent_id: string | null;
  created_at: string;
  updated_at: string;
}

export interface Run {
  id: string;
  agent_id: string;
  task_id: string | null;
  status: "running" | "succeeded" | "failed" | "cancelled";
  started_at: string;
  finished_at: string | null;
  tokens_in: number;
  tokens_out: number;
  cost_usd: string;
  error: string | null;
  events?: RunEvent[];
}

export interface RunEvent {
  id: string | number;
  run_id: string;
  kind: string;
  payload: unknown;
  occurred_at: string;
}

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

export interface Result<T> {
  data?: T;
  error?: unknown;
  status: number;
}

export const OPEN_STATUSES = new Set(["queued", "assigned", "running"]);

export async function call<T>(method: string, path: string, body?: unknown,
                              headers: Record<string, string> = {}): Promise<Result<T>> {
  const key = getKey();
  if (key === null) throw new Error("signed out: no request without a key");
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json",
                 ...(body === undefined ? {} : { "Content-Type": "application/json" }), ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    return { error: { detail: `the API did not answer (${String(err)})` }, status: 0 };
  }
  if (res.status === 401) {
    clearKey();
    window.dispatchEvent(new Event(SIGNED_OUT));
  }
  const text = await res.text();
  let json: unknown = undefined;
  try { json = text ? JSON.parse(text) : undefined; } catch { json = { detail: text }; }
  return res.ok ? { data: json as T, status: res.status } : { error: json, status: res.status };
}

/** Merge a changed row into a list keyed by id, newest first; deletes remove it. */
export function mergeRow<T extends { id: string }>(list: T[], op: string, pk: string,
                                                   row: Partial<T> | null): T[] {
  const at = list.findIndex((x) => x.id === pk);
  if (op === "delete") return at === -1 ? list : list.filter((x) => x.id !== pk);
  if (row === null) return list;
  if (at === -1) return [{ ...(row as T), id: pk }, ...list];
  const next = list.slice();
  next[at] = { ...list[at]!, ...row };
  return next;
}
