"""`modelbot doctor`: what a deployment needs, checked one line at a time.

Each check prints ``ok|warn|fail  <check>: <detail> — <what to do>``; the exit status is 1
when any check failed. Python, torch and CUDA, bitsandbytes' kernels, free GPU memory against
each local model's estimated footprint, each model's files (local, in the Hugging Face cache,
or on the hub), remote engines (GET /models), the Discord token and its Message Content
intent, and the Slack token and its scopes against docs/slack-manifest.yaml. Network checks
use a short timeout and no retries; tokens are never printed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, AsyncIterator, TextIO

from bot.config import Settings
from bot.doctor.machine import bitsandbytes_check, memory_checks, probe_torch, python_check, torch_check
from bot.doctor.models import remote_checks, source_check
from bot.doctor.platforms import discord_checks, slack_checks
from bot.doctor.report import Check, FAIL, HTTP_TIMEOUT, OK



async def cmd_doctor(settings: Settings, args: Any) -> int:
    return await run_doctor(settings, sys.stdout)


async def run_doctor(settings: Settings, out: TextIO) -> int:
    """Print every check as it completes; 1 if any failed, else 0."""
    failed = False
    async for check in checks(settings):
        print(check.line(), file=out, flush=True)
        failed |= check.status == FAIL
    return 1 if failed else 0


async def checks(settings: Settings) -> AsyncIterator[Check]:
    yield python_check()
    local = [spec for spec in settings.models if spec.engine == "local"]
    if local:
        gpu = await asyncio.to_thread(probe_torch, settings.device)
        yield torch_check(gpu, settings.device)
        if gpu.error is None:
            yield await asyncio.to_thread(bitsandbytes_check, gpu, local)
            for check in await asyncio.to_thread(memory_checks, gpu, local, settings):
                yield check
    else:
        yield Check(OK, "torch", "not needed here: every model runs on a remote server")
    for spec in settings.models:
        yield await asyncio.to_thread(source_check, spec, settings.cache_dir)
    for spec in settings.models:
        if spec.engine == "openai":
            for check in await remote_checks(spec):
                yield check
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as session:
        for check in await discord_checks(session, settings.sections.get("discord", {})):
            yield check
        for check in await slack_checks(session, settings.sections.get("slack", {})):
            yield check


