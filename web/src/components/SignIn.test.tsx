import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import { SignIn } from "./SignIn";
import { LiveStatus } from "./LiveStatus";

afterEach(cleanup);

describe("SignIn", () => {
  it("has one input labelled API key and a submit button, and hands over the trimmed key", () => {
    const onSignIn = vi.fn();
    const { container } = render(<SignIn onSignIn={onSignIn} />);
    expect(container.querySelectorAll("input")).toHaveLength(1);
    const input = screen.getByLabelText("API key");
    expect(input.getAttribute("type")).toBe("password");
    fireEvent.change(input, { target: { value: "  cesar_abc  " } });
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(onSignIn).toHaveBeenCalledWith("cesar_abc");
  });

  it("ignores a blank key", () => {
    const onSignIn = vi.fn();
    render(<SignIn onSignIn={onSignIn} />);
    fireEvent.change(screen.getByLabelText("API key"), { target: { value: "   " } });
    fireEvent.submit(screen.getByRole("button", { name: "Sign in" }).closest("form")!);
    expect(onSignIn).not.toHaveBeenCalled();
  });
});

describe("LiveStatus", () => {
  it("announces the state politely", () => {
    render(<LiveStatus state={{ kind: "offline", since: new Date(2026, 0, 1, 13, 7), reason: "x" }} />);
    const status = screen.getByRole("status");
    expect(status.textContent).toContain("offline since 13:07");
    expect(status.getAttribute("aria-live")).toBe("polite");
  });
});
