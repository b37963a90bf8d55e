"""The retained-WAL guard: a replication slot keeps every WAL segment from its restart position on
the source's disk, so a move whose stream stopped consuming (a dead ``sync``, a copy that takes
days, a forgotten move) would fill that disk. ``check`` is called by the sync loop every interval
and by ``copy``; past ``defaults.max_retained_wal_mb`` it drops the move's capture objects and
stops the move with exit 1 and the fix. The decision is pure (:func:`over_limit`); ADR 0008."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from orgmove import debris, state
from orgmove.capture import retained_wal_bytes
from orgmove.errors import RetainedWalExceeded
from orgmove.obs import log
from orgmove.plan import Plan

MB = 1024 * 1024


def over_limit(retained_bytes: int | None, limit_mb: float) -> bool:
    return retained_bytes is not None and retained_bytes > limit_mb * MB


def check(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], plan: Plan, limit_mb: float,
          *, source_cell: str = "") -> int:
    """Return the WAL bytes the move's slots keep on the source; when that passes ``limit_mb``,
    drop the move's slots, publication and origin, record it, and raise RetainedWalExceeded."""
    retained = {slot: retained_wal_bytes(src, slot) for slot in debris.forward_slots(plan.move_key)}
    worst_slot, worst = max(((s, b or 0) for s, b in retained.items()), key=lambda sb: sb[1])
    if not over_limit(worst, limit_mb):
        return worst
    dropped = debris.remove_capture(src, dst, plan.move_key)
    message = (f"move {plan.move_key} was stopped: its replication slot {worst_slot} kept "
               f"{worst / MB:.1f} MB of WAL on {source_cell or plan.from_cell}, more than "
               f"defaults.max_retained_wal_mb ({limit_mb:g} MB); the slot was dropped so the "
               "source's disk cannot fill. The organization stays on the source, writable")
    log(logging.ERROR, message, move=plan.move_key, dropped=dropped)
    try:
        if state.get_move(dst, plan.move_key) is not None:
            state.record_event(dst, plan.move_key, "retained_wal_exceeded", message,
                               retained_bytes=worst, limit_mb=limit_mb, dropped=dropped)
            state.update_move(dst, plan.move_key, last_error=message[:2000])
    except psycopg.Error as exc:  # the stop itself must not fail on the bookkeeping
        log(logging.WARNING, f"could not record the stop: {exc}", move=plan.move_key)
    raise RetainedWalExceeded(
        message,
        fix=("find why the stream stopped consuming (`orgmove status --org` shows each slot's "
             "retained WAL; runbooks/14-abandoned-slot.md), then restart the move with "
             "`orgmove copy PLAN` (it starts a new slot), or raise defaults.max_retained_wal_mb "
             "if the source's disk has room"),
    )
