"""What the platform emulators (tests/discord_emulator.py, tests/slack_emulator.py) share:
an aiohttp server on 127.0.0.1 at an ephemeral port with an `async with` lifecycle, polling
for a condition, and the check that the client library swallowed no exception."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

from aiohttp import web


class LocalServer:
    """Subclasses build their web.Application and close their own websockets."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _build_app(self) -> web.Application:
        raise NotImplementedError

    async def _close_connections(self) -> None:
        """Websockets and client sessions to end before the server stops."""

    async def start(self) -> Self:
        self._runner = web.AppRunner(self._build_app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # port 0: tests may run side by side
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        await self._close_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
        """Poll predicate() until it returns something truthy; return that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s: {predicate}")
            await asyncio.sleep(interval)


def take_fault(faults: list, matches: Callable[[Any], bool]) -> Any | None:
    """The first injected fault with uses left that `matches` a request, used once; else None."""
    for fault in faults:
        if fault.times > 0 and matches(fault):
            fault.times -= 1
            return fault
    return None


def max_in_window(times: Iterable[float], period: float) -> int:
    """The most of `times` (seconds) that fall within any `period`-second sliding window."""
    ordered, best, start = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= period:
            start += 1
        best = max(best, end - start + 1)
    return best


def assert_no_swallowed_errors(records: Iterable[logging.LogRecord], loggers: tuple[str, ...]) -> None:
    """Client libraries log (and swallow) exceptions raised in handlers: a test must see them."""
    errors = [r for r in records if r.levelno >= logging.ERROR and r.name.startswith(loggers)]
    assert not errors, [r.getMessage() for r in errors]
