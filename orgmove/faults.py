"""Failpoints for failure-injection tests: ``ORGMOVE_FAILPOINTS="copy.before_commit=sleep(5);
cutover.after_fence=exit"``. Unset in production, where :func:`failpoint` costs one dict lookup."""

from __future__ import annotations

import asyncio
import os
import re
import time

_SPEC = re.compile(r"^(sleep|exit|error)(?:\(([\d.]+)\))?$")


def _actions() -> dict[str, str]:
    raw = os.environ.get("ORGMOVE_FAILPOINTS", "")
    result: dict[str, str] = {}
    for item in raw.split(";"):
        name, _, action = item.strip().partition("=")
        if name and action:
            result[name.strip()] = action.strip()
    return result


def _parse(name: str) -> tuple[str, float] | None:
    action = _actions().get(name)
    if not action:
        return None
    m = _SPEC.match(action)
    if not m:
        return None
    return m.group(1), float(m.group(2) or 0)


def failpoint(name: str) -> None:
    parsed = _parse(name)
    if parsed is None:
        return
    kind, arg = parsed
    if kind == "sleep":
        time.sleep(arg)
    elif kind == "exit":
        os._exit(137)
    elif kind == "error":
        raise RuntimeError(f"failpoint {name}")


async def afailpoint(name: str) -> None:
    parsed = _parse(name)
    if parsed is None:
        return
    kind, arg = parsed
    if kind == "sleep":
        await asyncio.sleep(arg)
    else:
        failpoint(name)
