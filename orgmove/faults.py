"""Failpoints for failure-injection tests, set through the environment:

    ORGMOVE_FAILPOINTS="copy.before_commit=sleep(0.2);copy.after_commit=exit@5"

``sleep(S)`` pauses, ``exit`` ends the process at once as ``kill -9`` would (no cleanup, no
rollback sent), ``error`` raises. ``@N`` fires only on the N-th time the point is reached.
Unset in production, where :func:`failpoint` costs one environment lookup.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import Counter

_SPEC = re.compile(r"^(sleep|exit|error)(?:\(([\d.]+)\))?(?:@(\d+))?$")
_hits: Counter[str] = Counter()
_lock = threading.Lock()


def _action(name: str) -> tuple[str, float] | None:
    raw = os.environ.get("ORGMOVE_FAILPOINTS")
    if not raw:
        return None
    for item in raw.split(";"):
        point, _, action = item.strip().partition("=")
        if point.strip() != name:
            continue
        m = _SPEC.match(action.strip())
        if not m:
            return None
        with _lock:
            _hits[name] += 1
            hit = _hits[name]
        if m.group(3) and int(m.group(3)) != hit:
            return None
        return m.group(1), float(m.group(2) or 0)
    return None


def _act(name: str, kind: str, arg: float) -> None:
    if kind == "exit":
        os._exit(137)
    if kind == "error":
        raise RuntimeError(f"failpoint {name}")
    time.sleep(arg)


def failpoint(name: str) -> None:
    action = _action(name)
    if action is not None:
        _act(name, *action)


async def afailpoint(name: str) -> None:
    action = _action(name)
    if action is None:
        return
    kind, arg = action
    if kind == "sleep":
        await asyncio.sleep(arg)
    else:
        _act(name, kind, arg)
