// useLive(): one event-stream connection per signed-in tab, shared by every page through a
// context. Pages subscribe to the tables they show and to `reset` (reload everything).
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";
import { LiveConnection, type ChangeEvent, type LiveState } from "./live";

type Listener = (event: ChangeEvent) => void;

interface LiveApi {
  state: LiveState;
  subscribe: (tables: string[], listener: Listener) => () => void;
  onReset: (listener: () => void) => () => void;
}

const LiveContext = createContext<LiveApi | null>(null);

export function LiveProvider({ apiKey, onUnauthorized, children }:
  { apiKey: string; onUnauthorized: () => void; children: ReactNode }) {
  const [state, setState] = useState<LiveState>({ kind: "connecting" });
  const listeners = useRef(new Set<{ tables: Set<string>; fn: Listener }>());
  const resets = useRef(new Set<() => void>());
  const unauthorized = useRef(onUnauthorized);
  unauthorized.current = onUnauthorized;

  useEffect(() => {
    let wasDown = false;
    const conn = new LiveConnection({
      url: "/events",
      key: apiKey,
      onEvent: (event) => {
        for (const l of listeners.current) if (l.tables.has(event.table)) l.fn(event);
      },
      onReset: () => { for (const fn of resets.current) fn(); },
      onState: (next) => {
        // Back after a gap: what changed meanwhile may predate what the stream still holds,
        // and pages loaded while down hold nothing; reloading makes both right.
        if (next.kind === "live" && wasDown) for (const fn of resets.current) fn();
        wasDown = next.kind === "reconnecting" || next.kind === "offline";
        setState(next);
      },
      onUnauthorized: () => unauthorized.current(),
    });
    conn.start();
    return () => conn.stop();
  }, [apiKey]);

  const subscribe = useCallback((tables: string[], fn: Listener) => {
    const entry = { tables: new Set(tables), fn };
    listeners.current.add(entry);
    return () => { listeners.current.delete(entry); };
  }, []);
  const onReset = useCallback((fn: () => void) => {
    resets.current.add(fn);
    return () => { resets.current.delete(fn); };
  }, []);
  const value = useMemo<LiveApi>(() => ({ state, subscribe, onReset }),
                                 [state, subscribe, onReset]);

  return <LiveContext.Provider value={value}>{children}</LiveContext.Provider>;
}

export function useLive(): LiveApi {
  const live = useContext(LiveContext);
  if (live === null) throw new Error("useLive() outside <LiveProvider>");
  return live;
}

/** Calls `listener` for each change to one of `tables`, and `reload` on reset/reconnect. */
export function useLiveTables(tables: string[], listener: Listener, reload: () => void): LiveState {
  const live = useLive();
  const fn = useRef(listener);
  fn.current = listener;
  const again = useRef(reload);
  again.current = reload;
  const key = tables.join(",");
  const { subscribe, onReset } = live;
  useEffect(() => subscribe(key.split(","), (e) => fn.current(e)), [subscribe, key]);
  useEffect(() => onReset(() => again.current()), [onReset]);
  return live.state;
}
