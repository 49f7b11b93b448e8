"""What every doctor check returns, and the small helpers the checks share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"
HTTP_TIMEOUT = 5.0  # seconds for each network check; nothing is retried


@dataclass(frozen=True)
class Check:
    status: str  # ok | warn | fail
    name: str
    detail: str
    fix: str = ""  # what to do; empty for ok

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return f"{text} — {self.fix}" if self.fix else text


async def get_json(session: Any, url: str, headers: dict) -> tuple[int, dict]:
    async with session.get(url, headers=headers) as response:
        if response.status != 200:
            return response.status, {}
        body = await response.json(content_type=None)
        return response.status, body if isinstance(body, dict) else {}


def network_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {HTTP_TIMEOUT:g} s"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
