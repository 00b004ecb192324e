import { describe, expect, it } from "vitest";
import { mergeRow } from "./work";

type Row = { id: string; status: string; title: string };

describe("mergeRow", () => {
  const list: Row[] = [{ id: "a", status: "queued", title: "A" }, { id: "b", status: "done", title: "B" }];
  it("updates in place, keeping fields the change did not carry", () => {
    expect(mergeRow(list, "update", "a", { status: "cancelled" })).toEqual([
      { id: "a", status: "cancelled", title: "A" }, list[1]]);
  });
  it("puts a new row first and removes a deleted one", () => {
    expect(mergeRow(list, "insert", "c", { status: "queued", title: "C" }).map((r) => r.id)).toEqual(["c", "a", "b"]);
    expect(mergeRow(list, "delete", "a", null).map((r) => r.id)).toEqual(["b"]);
  });
});
