import { afterEach, describe, expect, it, vi } from "vitest";
import { backoffDelay, describe as describeState, LiveConnection, type ChangeEvent, type LiveState } from "./live";

const enc = new TextEncoder();

/** A fetch whose n-th call streams `script[n]` (strings, then close) or rejects / answers a status. */
function fakeFetch(script: Array<string[] | number | "error">) {
  const calls: Array<Record<string, string>> = [];
  const impl = vi.fn(async (_url: RequestInfo | URL, init?: RequestInit) => {
    calls.push({ ...(init?.headers as Record<string, string>) });
    const step = script[calls.length - 1] ?? "error";
    if (step === "error") throw new TypeError("Failed to fetch");
    if (typeof step === "number") return new Response("{}", { status: step });
    const body = new ReadableStream<Uint8Array>({
      start(ctrl) {
        for (const chunk of step) ctrl.enqueue(enc.encode(chunk));
        ctrl.close();
      },
    });
    return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  });
  return { impl: impl as unknown as typeof fetch, calls };
}

function ev(id: number, table = "tasks"): string {
  return `id: ${id}\ndata: ${JSON.stringify({ id, table, op: "update", pk: `k${id}`, row: { n: id }, at: "t" })}\n\n`;
}

function run(script: Array<string[] | number | "error">, until: (s: LiveState[]) => boolean,
             extra: Partial<ConstructorParameters<typeof LiveConnection>[0]> = {}) {
  const f = fakeFetch(script);
  const events: ChangeEvent[] = [];
  const states: LiveState[] = [];
  let resets = 0;
  return new Promise<{ events: ChangeEvent[]; states: LiveState[]; calls: typeof f.calls; resets: number; conn: LiveConnection }>((resolve) => {
    const conn: LiveConnection = new LiveConnection({
      url: "/events", key: "cesar_secret", fetchImpl: f.impl,
      onEvent: (e) => events.push(e),
      onReset: () => { resets += 1; },
      onState: (s) => {
        states.push(s);
        if (until(states)) { conn.stop(); resolve({ events, states, calls: f.calls, resets, conn }); }
      },
      sleep: async () => {}, now: () => new Date(2026, 0, 1, 9, 5), random: () => 1,
      ...extra,
    });
    conn.start();
  });
}

afterEach(() => vi.restoreAllMocks());

describe("LiveConnection", () => {
  it("sends the key in the Authorization header, never in the URL", async () => {
    const { calls } = await run([[ev(1)]], (s) => s.length >= 3);
    expect(calls[0]!.Authorization).toBe("Bearer cesar_secret");
    expect(calls[0]!.Accept).toBe("text/event-stream");
  });

  it("resumes from the last id it saw and drops what it has already seen", async () => {
    const { events, calls } = await run(
      [[ev(1), ev(2)], [ev(2), ev(3)]],
      (s) => s.filter((x) => x.kind === "reconnecting").length >= 2,
    );
    expect(calls[0]!["Last-Event-ID"]).toBeUndefined();
    expect(calls[1]!["Last-Event-ID"]).toBe("2");
    expect(events.map((e) => e.id)).toEqual([1, 2, 3]);
  });

  it("says reconnecting, then offline since HH:MM, then live (reconnected)", async () => {
    const { states } = await run(
      ["error", "error", "error", "error", [ev(5)]],
      (s) => s.some((x) => x.kind === "live"),
      { offlineAfter: 2 },
    );
    const text = states.map(describeState);
    expect(text).toEqual([
      "connecting", "reconnecting (attempt 1)", "reconnecting (attempt 2)",
      "offline since 09:05", "offline since 09:05", "live (reconnected at 09:05)",
    ]);
  });

  it("on reset asks for a reload and resumes from the reset's id", async () => {
    const { resets, calls } = await run(
      [["id: 40\nevent: reset\ndata: {}\n\n"], [ev(41)]],
      (s) => s.filter((x) => x.kind === "live").length >= 2,
    );
    expect(resets).toBe(1);
    expect(calls[1]!["Last-Event-ID"]).toBe("40");
  });

  it("stops and reports a refused key (401) without retrying", async () => {
    const onUnauthorized = vi.fn();
    const { calls, states } = await run([401], (s) => s.some((x) => x.kind === "offline"),
                                        { onUnauthorized });
    expect(onUnauthorized).toHaveBeenCalledOnce();
    expect(calls).toHaveLength(1);
    expect(states.at(-1)).toMatchObject({ kind: "offline", reason: "the API key was refused" });
  });
});

describe("backoffDelay", () => {
  it("doubles up to the cap, with jitter between half and all of it", () => {
    expect([1, 2, 3, 4, 5, 9].map((a) => backoffDelay(a, 500, 5000, () => 1)))
      .toEqual([500, 1000, 2000, 4000, 5000, 5000]);
    expect(backoffDelay(3, 500, 5000, () => 0)).toBe(1000);
  });
});
