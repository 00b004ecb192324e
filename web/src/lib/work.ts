// Tasks and runs (the API's work routes): their generated types, and how a live change merges
// into a list on the page.
import type { Schemas } from "./api";

export type Task = Schemas["Task"];
export type Run = Schemas["Run"];
export type RunWithEvents = Schemas["RunWithEvents"];
export type RunEvent = Schemas["RunEvent"];

export const OPEN_STATUSES = new Set(["queued", "assigned", "running"]);

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
