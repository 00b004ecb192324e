import { act, cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
  vi.resetModules();
  sessionStorage.clear();
});

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

describe("TasksPage", () => {
  it("lets the person retry a create that got no answer (the API was down)", async () => {
    sessionStorage.setItem("cesar.apiKey", "cesar_test");
    const posts: string[] = [];
    const fetchImpl = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
      const request = input instanceof Request ? input : new Request(String(input), init);
      const path = new URL(request.url, "http://localhost").pathname;
      if (path === "/events") return new Promise<Response>(() => {}); // stays connecting
      if (path === "/tasks" && request.method === "GET") return json({ items: [] });
      if (path === "/tasks" && request.method === "POST") {
        posts.push(request.headers.get("idempotency-key") ?? "");
        if (posts.length === 1) throw new TypeError("Failed to fetch");
        return json({ id: "00000000-0000-0000-0000-000000000001", title: "retry me",
                      description: "", status: "queued", priority: 3, agent_id: null,
                      created_at: "2026-01-01T00:00:00Z", updated_at: "2026-01-01T00:00:00Z" },
                    201);
      }
      return json({ detail: "not here" }, 404);
    });
    vi.stubGlobal("fetch", fetchImpl);
    // The client takes fetch when its module loads: import after the stub.
    const { LiveProvider } = await import("@/lib/useLive");
    const { default: TasksPage } = await import("@/pages/tasks");
    render(<LiveProvider apiKey="cesar_test" onUnauthorized={() => {}}><TasksPage /></LiveProvider>);
    await screen.findByText("No tasks yet.");

    fireEvent.change(screen.getByLabelText("Title"), { target: { value: "retry me" } });
    const button = screen.getByRole("button", { name: "Create task" });
    await act(async () => { fireEvent.click(button); });
    await waitFor(() => expect(posts).toHaveLength(1));
    await waitFor(() => expect(screen.getByRole("status").textContent).toMatch(/did not answer/));
    expect((button as HTMLButtonElement).disabled).toBe(false);

    await act(async () => { fireEvent.click(button); });
    await screen.findByText("retry me", { selector: "th" });
    // The retry is the same intended task: same idempotency key.
    expect(posts).toHaveLength(2);
    expect(posts[1]).toBe(posts[0]);
  });
});
