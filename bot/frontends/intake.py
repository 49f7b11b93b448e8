"""The intake every chat frontend uses: from "a question reached the bot" to "its answer is
done", the same steps on every platform.

A frontend decides whether a platform event is addressed to the bot (mentions, threads,
DMs: each platform has its own rules) and builds a Question and a reply for it. The intake
then: checks the place (`channels:`, `allow_dms`), posts the placeholder, remembers the
task so that a deleted question or a shutdown can stop it, refuses a model switch, a
/compare or a /settings change by a non-admin where the config says so, reads the history
only when the model needs it, reads attached files, and hands the rest to the host.
However it ends (answered, failed, deleted, stopped), the reply is closed with a clear last
word, and a reply deleted under the bot ends quietly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.attachments import AttachedFile, FileRefused, read_text_files
from bot.commands import compare_refusal, model_switch_refusal, settings_refusal
from bot.host import ChatEvent, Host
from bot.reply import Reply, ReplyGone, notice
from bot.write_budget import write_waits

log = logging.getLogger(__name__)

DELETED = "the message it answered was deleted"
SHUTTING_DOWN = "the bot is shutting down"


@dataclass(frozen=True)
class Places:
    """Where a frontend answers: the listed channels (and their threads; none listed: every
    channel), and direct messages if allowed. Mentions and slash commands alike."""

    channels: frozenset[str] = frozenset()
    allow_dms: bool = False

    def allows(self, channel: str, *, parent: str | None = None, dm: bool = False) -> bool:
        if dm:
            return self.allow_dms
        return not self.channels or channel in self.channels or (parent is not None and parent in self.channels)


@dataclass
class Question:
    """One message or command addressed to the bot, as the intake needs it."""

    key: Hashable  # the platform's id of the question, to stop its answer when it is deleted
    channel: str
    user: str
    text: str  # without the bot's mention; "/name args" for commands
    is_admin: bool = False
    #: reads the conversation before this question (reply chain, thread); None: no history
    read_history: Callable[[], Awaitable[list[dict]]] | None = None
    #: the platform has no conversations of its own (a terminal): the host keeps the channel's
    host_keeps_history: bool = False
    #: files attached to the message (bot/attachments.py): read before the model is asked
    files: tuple[AttachedFile, ...] = ()


class ChatReply(Reply, Protocol):
    async def start(self) -> bool:
        """Show that an answer is coming (a placeholder, a deferral); False: cannot answer here."""

    async def close(self, stopped: str | None = None) -> None:
        """End whatever the host left open, with `stopped` as the reason if it was stopped."""

    def abandon(self) -> None:
        """Stop writing at once (shutdown ran out of time)."""


class Intake:
    def __init__(self, host: Host, *, frontend: str, model_switch: str, compare: str = "everyone",
                 settings_change: str = "everyone"):
        self.host = host
        self.frontend = frontend
        self.model_switch = model_switch
        self.compare = compare  # everyone | admins: who may run /compare
        self.settings_change = settings_change  # everyone | admins: who may change a channel's /settings
        self.accepting = True
        self._answering: dict[Hashable, tuple[asyncio.Task, Any]] = {}
        self._stop_reasons: dict[Hashable, str] = {}
        self._write_waits = host.metrics.write_wait_observer(frontend) if host.metrics else None

    async def answer(self, question: Question, reply: ChatReply) -> None:
        """Answer one question through `reply`, whatever happens."""
        write_waits.set(self._write_waits)  # this answer's rate-limit waits count for this frontend
        if not self.accepting or not await reply.start():
            return
        if not self.accepting:  # the bot began to stop while the placeholder was being posted
            await _close(reply, f"stopped: {SHUTTING_DOWN}")
            return
        self._answering[question.key] = (asyncio.current_task(), reply)
        try:
            await self._handle(question, reply)
        except asyncio.CancelledError:
            ours = question.key in self._stop_reasons or not self.accepting  # stop() or shutdown()
            why = self._stop_reasons.pop(question.key, SHUTTING_DOWN)
            if ours:
                asyncio.current_task().uncancel()  # stopped on purpose: say so, then end normally
            await _close(reply, f"stopped: {why}")
            if not ours:
                raise  # whoever cancelled the task (Ctrl-C in the console) goes on cancelling it
            return
        except ReplyGone as exc:
            log.info("%s: the answer to %s ended: %s", self.frontend, question.key, exc)
        finally:
            self._answering.pop(question.key, None)
            self._stop_reasons.pop(question.key, None)  # a stop that came as the answer ended
        await _close(reply)

    async def _handle(self, question: Question, reply: ChatReply) -> None:
        refusal = (model_switch_refusal(question.text, self.model_switch, question.is_admin)
                   or compare_refusal(question.text, self.compare, question.is_admin)
                   or settings_refusal(question.text, self.settings_change, question.is_admin))
        if refusal:
            await notice(reply, refusal)
            return
        try:  # before the history: a refused file needs no history read
            wants_files = question.files and not question.text.startswith("/")
            files = await read_text_files(list(question.files)) if wants_files else []
        except FileRefused as exc:
            await notice(reply, str(exc))
            return
        wants_history = question.read_history is not None and not question.text.startswith("/")
        history = await question.read_history() if wants_history else []
        if question.host_keeps_history:
            history = None
        event = ChatEvent(channel=question.channel, user=question.user, text=question.text, history=history,
                          frontend=self.frontend, files=files)
        await self.host.handle(event, reply)

    def stop(self, key: Hashable, why: str = DELETED) -> None:
        """Stop answering `key` (its question was deleted): the worker slot frees at once."""
        answering = self._answering.get(key)
        if answering is not None:
            self._stop_reasons[key] = why
            answering[0].cancel()

    async def shutdown(self, timeout: float = 10.0) -> int:
        """Take no new questions; end every answer in progress with a notice, waiting at most
        `timeout` seconds for the notices to be written. Returns how many ran out of time."""
        self.accepting = False
        answering = dict(self._answering)
        for key, (task, _) in answering.items():
            self._stop_reasons[key] = SHUTTING_DOWN
            task.cancel()
        if not answering:
            return 0
        _, late = await asyncio.wait([task for task, _ in answering.values()], timeout=timeout)
        for task, reply in answering.values():
            if task in late:
                reply.abandon()
                task.cancel()
        if late:
            log.info("%s: %d answers could not be closed in time", self.frontend, len(late))  # the caller says it
        return len(late)


async def _close(reply: ChatReply, stopped: str | None = None) -> None:
    try:
        await reply.close(stopped)
    except ReplyGone:
        pass  # deleted on the platform: nothing left to close
