"""From an engine's thread to the asyncio loop, with one wake-up per batch step.

Handing each reply's text to the loop with its own `loop.call_soon_threadsafe` costs a
write to the loop's self-pipe, a wake-up and a callback per reply per step, and the loop's
work then competes with the generating thread for the GIL. Inside `handing_off()` a
thread's hand-offs are collected instead and delivered together, in order, by one callback
per loop when the block ends: a batch step's text for every reply in one wake-up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_local = threading.local()
_Pending = list[tuple[asyncio.AbstractEventLoop, Callable[..., Any], tuple]]


def hand_off(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Run callback(*args) on `loop`: at once (thread-safely), or when the current thread's
    handing_off() block ends."""
    pending: _Pending | None = getattr(_local, "pending", None)
    if pending is None:
        loop.call_soon_threadsafe(callback, *args)
    else:
        pending.append((loop, callback, args))


@contextmanager
def handing_off() -> Iterator[None]:
    """Collect this thread's hand-offs and deliver them together when the block ends (a nested
    block joins the outer one)."""
    if getattr(_local, "pending", None) is not None:
        yield
        return
    _local.pending = []
    try:
        yield
    finally:
        pending, _local.pending = _local.pending, None
        _deliver(pending)


def _deliver(pending: _Pending) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., Any], tuple]]] = {}
    for loop, callback, args in pending:
        by_loop.setdefault(loop, []).append((callback, args))
    for loop, calls in by_loop.items():
        try:
            loop.call_soon_threadsafe(_run_calls, calls)
        except RuntimeError:  # that loop is closed: nobody is left to read these
            pass


def _run_calls(calls: list[tuple[Callable[..., Any], tuple]]) -> None:
    for callback, args in calls:
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - as the loop does for a failing callback: report it, go on
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"exception in hand-off callback {callback!r}", "exception": exc})
