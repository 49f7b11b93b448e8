"""The replicas of one remote model: which to send a request to, which to skip.

A replica that fails (refused, timed out, 5xx, 429) is skipped until a health check
(GET {base_url}/models) passes again; checks run in the background every few seconds, and
at once when every replica is down (so a restarted server serves the very next request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

HEALTH_CHECK_SECONDS = 5.0


@dataclass
class Replica:
    url: str
    healthy: bool = True
    in_flight: int = 0
    last_error: str = ""
    failed_at: float = 0.0
    retry_after_until: float = 0.0  # a 429's Retry-After: not before this (monotonic)
    served: int = 0

    def snapshot(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "in_flight": self.in_flight,
                "last_error": self.last_error, "served": self.served}


class ReplicaPool:
    def __init__(self, urls: tuple[str, ...], check: Callable[[str], Awaitable[None]]):
        """`check(url)` raises when the replica is not serving."""
        self.replicas = [Replica(url) for url in urls]
        self._check = check
        self._checker: asyncio.Task | None = None

    def pick(self, exclude: set[str]) -> Replica | None:
        """The healthy replica with the fewest requests in flight (not one already tried)."""
        now = time.monotonic()
        candidates = [r for r in self.replicas if r.healthy and r.url not in exclude and r.retry_after_until <= now]
        return min(candidates, key=lambda r: (r.in_flight, r.served), default=None)

    def soonest_retry_after(self, exclude: set[str]) -> float | None:
        """Seconds until a rate-limited (but otherwise healthy) replica takes requests again."""
        now = time.monotonic()
        waits = [r.retry_after_until - now for r in self.replicas
                 if r.healthy and r.url not in exclude and r.retry_after_until > now]
        return min(waits, default=None)

    def failures(self) -> str:
        """Why the failing replicas fail, for the user's message."""
        return "; ".join(f"{r.url}: {r.last_error}" for r in self.replicas if not r.healthy) or "no replica answered"

    def mark_failed(self, replica: Replica, error: str) -> None:
        if replica.healthy:
            log.warning("replica %s failed (%s); skipping it until its health check passes", replica.url, error)
        replica.healthy, replica.last_error, replica.failed_at = False, error, time.monotonic()
        self._ensure_checker()

    def rate_limited(self, replica: Replica, seconds: float) -> None:
        replica.retry_after_until = time.monotonic() + seconds
        replica.last_error = f"rate limited for {seconds:g} s"

    async def revive(self) -> bool:
        """Health-check every failing replica now; whether any passed."""
        failing = [r for r in self.replicas if not r.healthy]
        results = await asyncio.gather(*(self._check_one(r) for r in failing))
        return any(results)

    async def _check_one(self, replica: Replica) -> bool:
        try:
            await self._check(replica.url)
        except Exception as exc:  # noqa: BLE001 - any failure means: still down
            replica.last_error = _short(exc)
            return False
        if not replica.healthy:
            log.info("replica %s passed its health check and serves again", replica.url)
        replica.healthy, replica.last_error = True, ""
        return True

    def _ensure_checker(self) -> None:
        if self._checker is None or self._checker.done():
            self._checker = asyncio.get_running_loop().create_task(self._check_until_healthy())

    async def _check_until_healthy(self) -> None:
        while any(not r.healthy for r in self.replicas):
            await asyncio.sleep(HEALTH_CHECK_SECONDS)
            await self.revive()

    def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
