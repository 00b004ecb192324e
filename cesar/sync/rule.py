"""The conflict rule: last writer wins, by the version the database set, ties by origin.

One function decides for both directions and both engines, so both sides always pick the same
winner and converge. A version is ``(written_at, origin)``: ``written_at`` is the capture
trigger's ``greatest(clock_timestamp(), previous + 1 µs)`` and ``origin`` the random, unique id
of the database that wrote it (``sync_node.origin``). Python compares the datetimes (exact, to
the microsecond) and then the origin strings by code point, independent of any collation.
``None`` (a row that predates the capture: it has no version) is older than every version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

Version = tuple[datetime, str]


def compare(a: Version | None, b: Version | None) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same write as, or newer than ``b``."""
    if a == b:
        return 0
    if a is None:
        return -1
    if b is None:
        return 1
    return -1 if a < b else 1


class Action(Enum):
    APPLY = "apply"          # the incoming version wins: write it
    SAME = "same"            # the target already holds this very version: nothing to do
    DISCARD = "discard"      # the target's version is newer: it travels the other way


@dataclass(frozen=True)
class Existing:
    """What the target holds for a key: its version row (if any) and whether the row exists."""

    version: Version | None
    deleted: bool
    pending: bool
    present: bool


@dataclass(frozen=True)
class Decision:
    action: Action
    #: Whether a version is lost and must be recorded if the row images differ: the target's
    #: unsent change overwritten (APPLY), or the incoming version discarded (DISCARD).
    conflict: bool


def decide(incoming: Version, incoming_deleted: bool, existing: Existing | None) -> Decision:
    """What to do with one incoming change, given the target's state of that key."""
    if existing is None or existing.version is None:
        # No version on the target: the row is new there, or older than the capture.
        return Decision(Action.APPLY, conflict=False)
    order = compare(incoming, existing.version)
    both_deleted = incoming_deleted and existing.deleted
    if order == 0:
        return Decision(Action.SAME, conflict=False)
    if order > 0:
        return Decision(Action.APPLY, conflict=existing.pending and not both_deleted)
    return Decision(Action.DISCARD, conflict=not both_deleted)
