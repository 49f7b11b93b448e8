"""What the frontend end-to-end tests (Discord, Slack) share: the bot running in the test's
event loop through `modelbot run`'s code path, and the answer the same model gives without
any platform (greedy), to compare with what arrived over the wire."""

from __future__ import annotations

import argparse
import asyncio
from contextlib import asynccontextmanager

from helpers import RecordingOut, smollm2, write_config

from bot.app import build_app
from bot.cli import cmd_run
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent


def frontend_config(tmp_path, frontend: str, section: dict, models=None, worker=None):
    """A config with SmolLM2 (or `models`) and the frontend's section, enabled."""
    return write_config(tmp_path, models or [smollm2()], worker=worker or {}, **{frontend: {"enabled": True, **section}})


@asynccontextmanager
async def running_bot(config, frontend: str):
    """`modelbot run FRONTEND` in this event loop, until the block ends."""
    settings = load_settings(config)
    task = asyncio.create_task(cmd_run(settings, argparse.Namespace(frontends=[frontend])))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def expected_reply(config, messages: list[dict], model: str | None = None) -> str:
    """What the model says to the same conversation without a chat platform (greedy)."""
    return (await expected_replies(config, [messages], model))[0]


async def expected_replies(config, conversations: list[list[dict]], model: str | None = None) -> list[str]:
    """expected_reply for several conversations, with the model loaded once."""
    app = build_app(load_settings(config))
    try:
        if model:
            app.host.set_channel_model("x", model, persist=False)
        answers = []
        for messages in conversations:
            *history, last = messages
            result = await app.host.chat(ChatEvent("x", "u", last["content"], history=history),
                                         ConsoleReply(RecordingOut(), RecordingOut(), show_footer=False))
            answers.append(result.text)
        return answers
    finally:
        await app.close()
