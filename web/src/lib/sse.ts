// A Server-Sent Events parser for a fetch() body (EventSource cannot send an Authorization
// header). Follows the WHATWG event-stream rules: lines end in LF, CR or CRLF; a blank line
// dispatches; `:` starts a comment; `data` lines join with LF; `id` sets the last event id.

export interface SseMessage {
  event: string; // "message" unless the server named it
  data: string;
  id: string | null; // the id field of this message, if it had one
}

export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private id: string | null = null;
  private sawCR = false;

  constructor(private readonly onMessage: (m: SseMessage) => void,
              private readonly onComment: (text: string) => void = () => {}) {}

  push(chunk: string): void {
    let text = chunk;
    if (this.sawCR && text.startsWith("\n")) text = text.slice(1); // CRLF split across chunks
    this.sawCR = text.endsWith("\r");
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop() ?? "";
    for (const line of lines) this.line(line);
  }

  private line(line: string): void {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) {
      this.onComment(line.slice(1).trimStart());
      return;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }

  private dispatch(): void {
    if (this.data.length === 0 && this.id === null) {
      this.event = "";
      return;
    }
    const message = { event: this.event || "message", data: this.data.join("\n"), id: this.id };
    this.data = [];
    this.event = "";
    this.id = null;
    if (message.data !== "" || message.event !== "message") this.onMessage(message);
  }
}
