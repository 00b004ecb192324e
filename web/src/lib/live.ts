// The live connection behind useLive(): the API's /events stream read with fetch() so the key
// goes in the Authorization header (EventSource cannot send headers, and a key in a URL ends up
// in proxy logs). Reconnects with capped exponential backoff and jitter, resumes with
// Last-Event-ID, drops events it has already seen, and on `reset` (the server no longer holds
// what we missed) asks the page to reload its data.
import { SseParser } from "./sse";

export interface ChangeEvent {
  id: number;
  table: string;
  op: "insert" | "update" | "delete";
  pk: string;
  row: Record<string, unknown> | null;
  at: string;
}

export type LiveState =
  | { kind: "connecting" }
  | { kind: "live"; reconnectedAt: Date | null }
  | { kind: "reconnecting"; since: Date; attempt: number }
  | { kind: "offline"; since: Date; reason: string };

export interface LiveOptions {
  url: string;
  key: string;
  onEvent: (event: ChangeEvent) => void;
  onReset: () => void;
  onState: (state: LiveState) => void;
  /** The key was refused (401): the page signs out. */
  onUnauthorized?: () => void;
  fetchImpl?: typeof fetch;
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** Failed attempts in a row after which the state says offline (it keeps retrying). */
  offlineAfter?: number;
  /** No byte for this long (the server pings every 15 s): the connection is dead. */
  idleTimeoutMs?: number;
  now?: () => Date;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  random?: () => number;
}

const defaultSleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

export function backoffDelay(attempt: number, initialMs: number, maxMs: number,
                             random: () => number): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.5 + random() / 2)); // jitter: a restart is not a thundering herd
}

export class LiveConnection {
  lastId: number | null = null;
  private stopped = false;
  private readonly stop$ = new AbortController();
  private current: AbortController | null = null;

  constructor(private readonly o: LiveOptions) {}

  start(): void {
    void this.loop();
  }

  stop(): void {
    this.stopped = true;
    this.stop$.abort();
    this.current?.abort();
  }

  private async loop(): Promise<void> {
    const fetchImpl = this.o.fetchImpl ?? fetch.bind(globalThis);
    const now = this.o.now ?? (() => new Date());
    const sleep = this.o.sleep ?? defaultSleep;
    const random = this.o.random ?? Math.random;
    const offlineAfter = this.o.offlineAfter ?? 3;
    let attempt = 0;
    let downSince: Date | null = null;
    this.o.onState({ kind: "connecting" });
    while (!this.stopped) {
      const ctrl = new AbortController();
      this.current = ctrl;
      let reason = "the connection closed";
      try {
        const headers: Record<string, string> = {
          Authorization: `Bearer ${this.o.key}`,
          Accept: "text/event-stream",
        };
        if (this.lastId !== null) headers["Last-Event-ID"] = String(this.lastId);
        const res = await fetchImpl(this.o.url, { headers, signal: ctrl.signal, cache: "no-store" });
        if (res.status === 401) {
          this.o.onUnauthorized?.();
          this.o.onState({ kind: "offline", since: now(), reason: "the API key was refused" });
          return;
        }
        if (!res.ok || !res.body) throw new Error(`the stream answered ${res.status}`);
        attempt = 0;
        this.o.onState({ kind: "live", reconnectedAt: downSince ? now() : null });
        downSince = null;
        await this.read(res.body, ctrl);
      } catch (err) {
        if (this.stopped) return;
        reason = err instanceof Error ? err.message : String(err);
      }
      if (this.stopped) return;
      attempt += 1;
      downSince = downSince ?? now();
      this.o.onState(attempt > offlineAfter
        ? { kind: "offline", since: downSince, reason }
        : { kind: "reconnecting", since: downSince, attempt });
      await sleep(backoffDelay(attempt, this.o.initialDelayMs ?? 500, this.o.maxDelayMs ?? 5000,
                               random), this.stop$.signal);
    }
  }

  private async read(body: ReadableStream<Uint8Array>, ctrl: AbortController): Promise<void> {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const idle = this.o.idleTimeoutMs ?? 45_000;
    let watchdog: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ctrl.abort(), idle);
    };
    const parser = new SseParser((m) => {
      if (m.event === "reset") {
        const id = m.id === null ? NaN : Number(m.id);
        this.lastId = Number.isFinite(id) ? id : null;
        this.o.onReset();
        return;
      }
      if (m.event !== "message") return;
      let event: ChangeEvent;
      try {
        event = JSON.parse(m.data) as ChangeEvent;
      } catch {
        return; // not ours to interpret; the stream goes on
      }
      const id = m.id !== null ? Number(m.id) : Number(event.id);
      if (Number.isFinite(id)) {
        if (this.lastId !== null && id <= this.lastId) return; // already seen (resume overlap)
        this.lastId = id;
      }
      this.o.onEvent(event);
    });
    arm();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      clearTimeout(watchdog);
      reader.releaseLock();
    }
  }
}

export function hhmm(date: Date): string {
  return `${String(date.getHours()).padStart(2, "0")}:${String(date.getMinutes()).padStart(2, "0")}`;
}

export function describe(state: LiveState): string {
  switch (state.kind) {
    case "connecting":
      return "connecting";
    case "live":
      return state.reconnectedAt ? `live (reconnected at ${hhmm(state.reconnectedAt)})` : "live";
    case "reconnecting":
      return `reconnecting (attempt ${state.attempt})`;
    case "offline":
      return `offline since ${hhmm(state.since)}`;
  }
}
