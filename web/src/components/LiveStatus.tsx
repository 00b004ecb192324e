import { describe, type LiveState } from "@/lib/live";

export function LiveStatus({ state }: { state: LiveState }) {
  return (
    <p className={`live live-${state.kind}`} role="status" aria-live="polite" data-testid="live-status">
      <span className="dot" aria-hidden="true" /> {describe(state)}
    </p>
  );
}
