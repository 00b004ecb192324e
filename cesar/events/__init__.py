"""The live event stream's durable log and its per-process reader (docs/events.md)."""
