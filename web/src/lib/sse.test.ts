import { describe, expect, it } from "vitest";
import { SseParser, type SseMessage } from "./sse";

function parse(chunks: string[]): { messages: SseMessage[]; comments: string[] } {
  const messages: SseMessage[] = [];
  const comments: string[] = [];
  const p = new SseParser((m) => messages.push(m), (c) => comments.push(c));
  for (const c of chunks) p.push(c);
  return { messages, comments };
}

describe("SseParser", () => {
  it("joins data lines, keeps id and event, and skips comments", () => {
    const { messages, comments } = parse([": ping\n\nid: 7\nevent: reset\ndata: a\ndata: b\n\n"]);
    expect(comments).toEqual(["ping"]);
    expect(messages).toEqual([{ event: "reset", data: "a\nb", id: "7" }]);
  });

  it("reassembles a message split anywhere, including inside CRLF", () => {
    const text = 'id: 12\r\ndata: {"id": 12, "table": "tasks"}\r\n\r\n';
    for (let cut = 1; cut < text.length; cut += 1) {
      const { messages } = parse([text.slice(0, cut), text.slice(cut)]);
      expect(messages).toEqual([{ event: "message", data: '{"id": 12, "table": "tasks"}', id: "12" }]);
    }
  });

  it("does not dispatch until the blank line", () => {
    expect(parse(["id: 1\ndata: x\n"]).messages).toEqual([]);
  });
});
