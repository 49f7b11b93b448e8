"""How the Slack frontend answers: in a thread (a mention's, a DM's, an assistant thread's),
as a slash command's message in the channel, or privately to the asker.

Thread answers use Slack's chat streaming (chat.startStream / appendStream / stopStream,
standard Markdown, "is thinking…" as the thread's status while the answer waits) where the
workspace has it, and otherwise a placeholder that grows by chat.update (converted to
mrkdwn). Either way every call takes a slot of its method's budget (Slack's rate tiers), and
a failed call is retried with backoff until the Web API answers again (bot/streaming.py),
so an outage or a burst of 429s never strands an answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from bot.frontends.message_reply import MessageReplyBase
from bot.frontends.mrkdwn import ends_in_code, to_mrkdwn
from bot.frontends.slack_settings import SlackSettings
from bot.reply import ReplyGone
from bot.streaming import MessageTooLong, StreamedMessage, TransientWriteError, deliver
from bot.write_budget import FINAL, FIRST_POST, UNLIMITED, UPDATE, KeyedWindows, WriteBudget, WriteWindow

log = logging.getLogger(__name__)

# errors the Web API may answer differently later
TRANSIENT_ERRORS = {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
                    "request_timeout", "team_added_to_org"}
GONE_ERRORS = {"message_not_found", "cant_update_message"}
# chat.startStream refused for good: this workspace (or channel) answers with chat.update instead
STREAMING_UNSUPPORTED = {"unknown_method", "method_deprecated", "missing_scope", "not_allowed_token_type",
                         "feature_not_enabled", "channel_type_not_supported", "access_denied", "not_allowed",
                         "missing_recipient_user_id", "missing_recipient_team_id", "invalid_arguments"}
STREAM_EXPIRED = "message_not_in_streaming_state"
THINKING = "is thinking…"


class StreamingUnsupported(Exception):
    pass


async def slack_write(call, where: str):
    """A Web API call, with what Slack answered turned into what bot/streaming.py retries
    (rate limits, server and network errors), splits (msg_too_long) or ends quietly (the
    message was deleted)."""
    import aiohttp
    from slack_sdk.errors import SlackApiError

    try:
        return await call()
    except SlackApiError as exc:
        error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
        status = exc.response.status_code
        if status == 429 or status >= 500 or error in TRANSIENT_ERRORS:
            retry_after = exc.response.headers.get("retry-after") or exc.response.headers.get("Retry-After")
            raise TransientWriteError(f"{error or status}", float(retry_after) if retry_after else None) from exc
        if error == "msg_too_long":
            raise MessageTooLong(where) from exc
        if error in GONE_ERRORS:
            raise ReplyGone(f"{where}: {error}") from exc
        if error in ("not_in_channel", "channel_not_found", "is_archived"):
            log.error("slack: cannot post in %s (%s); invite the app to the channel (/invite @modelbot) and check "
                      "its chat:write scope", where, error)
        raise
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise TransientWriteError(f"{type(exc).__name__}: {exc}") from exc


def slack_footer(footer: str) -> str:
    """Slack has no small print in message text: the context line is in italics."""
    return f"\n_{footer}_"


class SlackBudgets:
    """The workspace's rate tiers, shared by every answer (Slack limits per workspace, and
    chat.postMessage per channel)."""

    def __init__(self, settings: SlackSettings):
        self.posts = KeyedWindows(5, 5.0, "slack chat.postMessage")  # about 1 a second per channel, bursts allowed
        self.updates = WriteBudget([WriteWindow(settings.edits_per_minute, 60.0, "slack chat.update")])  # Tier 3
        self.stream_starts = WriteBudget([WriteWindow(settings.stream_starts_per_minute, 60.0, "chat.startStream")])
        self.stream_appends = WriteBudget([WriteWindow(settings.stream_appends_per_minute, 60.0,
                                                       "chat.appendStream")])  # Tier 4
        self.stream_stops = WriteBudget([WriteWindow(settings.stream_starts_per_minute, 60.0, "chat.stopStream")])

    def post(self, channel: str) -> WriteBudget:
        return WriteBudget([self.posts(channel)])


@dataclass
class Workspace:
    """What every answer in the workspace shares: the client, the budgets, and what the
    workspace turned out to support."""

    client: Any
    settings: SlackSettings
    budgets: SlackBudgets
    team_id: str = ""
    streaming: bool = True  # chat streaming, until the workspace refuses it
    statuses: bool = True  # assistant.threads.setStatus, likewise


@dataclass
class PostedMessage:
    """A message the bot posted: where it is, and the Markdown it shows (before conversion)."""

    channel: str
    ts: str
    markdown: str
    opens_in_code: bool  # continues a code block that the previous part left open
    prefix: str = ""  # shown above the converted text (a command's invocation line)
    streaming: bool = False  # an open chat stream: it grows by appends and ends with a stop

    def render(self) -> str:
        body = to_mrkdwn(self.markdown, self.opens_in_code)
        return f"{self.prefix}\n{body}" if self.prefix else body


class StatusLine:
    """The thread's status ("modelbot is thinking…"), paced like edits, latest wins; best
    effort: an answer never waits for it, and a workspace without it is asked once."""

    def __init__(self, workspace: Workspace, channel: str, thread_ts: str, interval: float):
        self.workspace, self.channel, self.thread_ts, self.interval = workspace, channel, thread_ts, interval
        self._wanted = self._shown = ""
        self._task: asyncio.Task | None = None

    def show(self, text: str) -> None:
        self._wanted = text
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._update())

    async def clear(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._shown:
            self._wanted = ""
            await self._set("")

    async def _update(self) -> None:
        while self._wanted != self._shown and self.workspace.statuses:
            await self._set(self._wanted)
            await asyncio.sleep(self.interval)

    async def _set(self, status: str) -> None:
        from slack_sdk.errors import SlackApiError

        client = self.workspace.client
        try:
            await slack_write(lambda: client.assistant_threads_setStatus(
                channel_id=self.channel, thread_ts=self.thread_ts, status=status), f"channel {self.channel}")
        except (SlackApiError, TransientWriteError, ReplyGone) as exc:
            if isinstance(exc, SlackApiError) and exc.response.get("error") in STREAMING_UNSUPPORTED:
                self.workspace.statuses = False
            log.info("slack: no thread status in %s (%s)", self.channel, exc)
        self._shown = status  # not retried: the answer itself is what matters


class SlackReply(MessageReplyBase):
    """Answers in one thread of a channel (a mention's): chat.postMessage and chat.update,
    converted to mrkdwn."""

    def __init__(self, workspace: Workspace, channel: str, thread_ts: str | None):
        settings = workspace.settings
        super().__init__(settings.message_limit, settings.edit_interval, post_budget=workspace.budgets.post(channel),
                         edit_budget=workspace.budgets.updates, footer_format=slack_footer,
                         name=f"slack reply in {channel}")
        self.workspace = workspace
        self.client = workspace.client
        self.channel = channel
        self.thread_ts = thread_ts

    async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
        from slack_sdk.errors import SlackApiError

        data = {"file": content} if isinstance(content, bytes) else {"content": content}  # bytes: a picture
        try:
            await deliver(lambda: slack_write(lambda: self.client.files_upload_v2(
                channel=self.channel, thread_ts=self.thread_ts, **data, filename=filename, title=filename,
                initial_comment=caption or None), f"channel {self.channel}"),
                budget=self.post_budget, priority=FINAL, retry=self.retry, what=f"upload to {self.channel}")
        except SlackApiError as exc:  # e.g. no files:write scope: the same text as a snippet instead
            if isinstance(content, bytes):  # a picture cannot be a snippet: say why it is missing
                error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
                log.warning("slack: file upload refused in %s (%s)", self.channel, error)
                hint = "; the app needs the files:write scope" if error == "missing_scope" else ""
                await self.send(f"I could not upload {filename} ({caption or 'a picture'}) here: "
                                f"Slack refused the upload ({error}{hint}).")
                return
            log.warning("slack: file upload refused in %s; sending it as text", self.channel)
            await self.send(f"{caption}\n```\n{content}\n```" if caption else f"```\n{content}\n```")

    def _new_message(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        opens = previous is not None and ends_in_code(previous.markdown, previous.opens_in_code)
        return PostedMessage(self.channel, "", text, opens)

    async def _post(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        message = self._new_message(text, previous)
        posted = await slack_write(lambda: self.client.chat_postMessage(
            channel=self.channel, thread_ts=self.thread_ts, text=message.render(), unfurl_links=False,
            unfurl_media=False), f"channel {self.channel}")
        message.ts = posted["ts"]
        return message

    async def _edit(self, message: PostedMessage, text: str) -> None:
        shown = replace(message, markdown=text).render()
        await slack_write(lambda: self.client.chat_update(channel=message.channel, ts=message.ts, text=shown),
                          f"channel {message.channel}")
        message.markdown = text  # only once Slack shows it: a failed edit is tried again


class ThreadReply(SlackReply):
    """An answer in a thread: Slack's chat streaming where the workspace has it (the status
    shows "is thinking…" until the words come), else SlackReply's placeholder and edits."""

    def __init__(self, workspace: Workspace, channel: str, thread_ts: str, asker: str, dm: bool):
        super().__init__(workspace, channel, thread_ts)
        self.asker, self.dm = asker, dm
        self.streams = workspace.streaming and workspace.settings.streaming
        self.status_line = StatusLine(workspace, channel, thread_ts, workspace.settings.edit_interval)
        if self.streams:
            budgets = workspace.budgets
            self.post_budget, self.edit_budget = budgets.stream_starts, budgets.stream_appends
            self.seal_budget = budgets.stream_stops

    async def start(self) -> bool:
        if not self.streams:
            return await super().start()
        self.status_line.show(THINKING)  # no placeholder message: the stream starts with the words
        return True

    async def _show_status(self, stream: StreamedMessage, text: str) -> None:
        if not self.streams:
            await super()._show_status(stream, text)
        elif not stream.text and not stream.ended:
            self.status_line.show(f"is {text.removeprefix('… ')}")

    def _seal_callback(self):
        return self._seal if self.streams else None

    async def close(self, stopped: str | None = None) -> None:
        try:
            await super().close(stopped)
        finally:
            await self.status_line.clear()

    # -- writes: a stream where possible, else chat.postMessage / chat.update ---------------------
    async def _post(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        if self.streams and self.workspace.streaming:
            try:
                return await self._start_stream(text, previous)
            except StreamingUnsupported as exc:
                self.workspace.streaming = False  # later answers go straight to chat.update
                log.warning("slack: chat streaming refused (%s); answering with chat.update instead", exc)
        async with self._nested(self.workspace.budgets.post(self.channel), FIRST_POST):
            return await super()._post(text, previous)

    async def _edit(self, message: PostedMessage, text: str) -> None:
        await self._grow(message, text, final=False)

    async def _seal(self, message: PostedMessage, text: str) -> None:
        await self._grow(message, text, final=True)

    async def _grow(self, message: PostedMessage, text: str, final: bool) -> None:
        """A stream grows by appends and ends with a stop; any other message by chat.update."""
        if message.streaming:
            try:
                await self._append(message, text, stop=final)
                return
            except StreamingUnsupported:
                message.streaming = False  # the stream expired on Slack's side: edit it as a message
        if text != message.markdown:
            async with self._nested(self.workspace.budgets.updates, FINAL if final else UPDATE):
                await super()._edit(message, text)

    def _nested(self, budget: WriteBudget, priority: int):
        """A fallback call inside a streaming answer takes its own method's slot as well."""
        return budget.slot(priority) if self.streams else UNLIMITED.slot()

    async def _start_stream(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        from slack_sdk.errors import SlackApiError

        message = self._new_message(text, previous)
        message.streaming = True
        recipient = {} if self.dm else {"recipient_user_id": self.asker, "recipient_team_id": self.workspace.team_id}
        opening = "```\n" if message.opens_in_code else ""  # the previous part closed a code block; reopen it
        try:
            started = await slack_write(lambda: self.client.chat_startStream(
                channel=self.channel, thread_ts=self.thread_ts, markdown_text=opening + text, **recipient),
                f"channel {self.channel}")
        except SlackApiError as exc:
            if exc.response.get("error") in STREAMING_UNSUPPORTED:
                raise StreamingUnsupported(exc.response.get("error")) from exc
            raise
        message.ts = started["ts"]
        return message

    async def _append(self, message: PostedMessage, text: str, stop: bool) -> None:
        """Send what `text` adds to what the stream shows; `stop` ends the stream (closing a
        code block left open, which the next part reopens)."""
        from slack_sdk.errors import SlackApiError

        if not text.startswith(message.markdown):
            log.warning("slack: %s would have to shrink a streamed message; keeping what it shows", self.name)
            text = message.markdown
        delta = text[len(message.markdown):]
        if stop and ends_in_code(text, message.opens_in_code):
            delta += "\n```"
        call = self.client.chat_stopStream if stop else self.client.chat_appendStream
        if not delta and not stop:
            return
        try:
            await slack_write(lambda: call(channel=message.channel, ts=message.ts, markdown_text=delta or None),
                              f"channel {message.channel}")
        except SlackApiError as exc:
            if exc.response.get("error") == STREAM_EXPIRED:
                raise StreamingUnsupported(STREAM_EXPIRED) from exc
            raise
        message.markdown = text
        message.streaming = not stop


class CommandReply(SlackReply):
    """Answers to a slash command: the first message in the channel, under the invocation line
    ("@user `/compare …`"); whatever follows (a second model, a file) in its thread. Refusals
    and errors go to the asker only (response_url)."""

    def __init__(self, workspace: Workspace, channel: str, invocation: str, respond):
        super().__init__(workspace, channel, None)
        self.invocation = invocation
        self.respond = respond

    async def start(self) -> bool:
        await super().start()
        if await self._first.posted():  # the anchor: a channel the bot is not in refuses it
            return True
        await respond_privately(self.respond, "I cannot post in this channel: add me first (`/invite @modelbot`), "
                                              "then try again.")
        return False

    async def notice(self, text: str) -> None:
        anchor = self._first
        await respond_privately(self.respond, text)
        if anchor is not None and anchor.messages and not anchor.text:  # only "…" in the channel: take it away
            self._first = None
            anchor.abandon()
            message = anchor.messages[0]
            try:
                await slack_write(lambda: self.client.chat_delete(channel=message.channel, ts=message.ts),
                                  f"channel {self.channel}")
            except Exception as exc:  # noqa: BLE001 - a leftover placeholder is untidy, not harmful
                log.info("slack: could not remove a placeholder in %s (%s)", self.channel, exc)

    async def _post(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        if self.thread_ts is not None:
            return await super()._post(text, previous)
        message = self._new_message(text, previous)
        message.prefix = self.invocation
        posted = await slack_write(lambda: self.client.chat_postMessage(
            channel=self.channel, text=message.render(), unfurl_links=False, unfurl_media=False),
            f"channel {self.channel}")
        message.ts = self.thread_ts = posted["ts"]  # the anchor of everything else
        return message


class PrivateReply:
    """A command answered to the asker only (/help, /stats), through its response_url."""

    def __init__(self, respond):
        self.respond = respond

    async def start(self) -> bool:
        return True

    async def send(self, text: str) -> None:
        await respond_privately(self.respond, text)

    async def notice(self, text: str) -> None:
        await respond_privately(self.respond, text)

    async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
        if isinstance(content, bytes):  # a response_url takes text only
            await self.send(f"({caption or filename} is a picture; a private answer cannot carry it)")
            return
        await self.send(f"{caption}\n```\n{content}\n```")

    async def progress(self, text: str) -> None:
        pass  # a private answer has nowhere to show a passing status

    def stream(self, header: str = "") -> "_CollectedStream":
        return _CollectedStream(self, header)

    async def close(self, stopped: str | None = None) -> None:
        pass

    def abandon(self) -> None:
        pass


@dataclass
class _CollectedStream:
    """A streamed answer sent in one piece at the end (response_url cannot be edited freely)."""

    reply: PrivateReply
    header: str = ""
    parts: list[str] = field(default_factory=list)

    async def write(self, delta: str) -> None:
        self.parts.append(delta)

    async def finish(self, footer: str) -> None:
        head = f"**{self.header}**\n" if self.header else ""
        await self.reply.send(head + "".join(self.parts) + (slack_footer(footer) if footer else ""))

    async def fail(self, message: str) -> None:
        await self.reply.send("".join(self.parts) + f"\n\n⚠️ {message}")


async def respond_privately(respond, markdown: str) -> None:
    """An ephemeral answer through the command's response_url (retried if Slack is down)."""
    import aiohttp

    async def post():
        try:
            answered = await respond(text=to_mrkdwn(markdown), response_type="ephemeral")
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise TransientWriteError(f"{type(exc).__name__}: {exc}") from exc
        status = getattr(answered, "status_code", 200)
        if status == 429 or status >= 500:
            raise TransientWriteError(f"response_url answered {status}")

    try:
        await deliver(post, what="slack response_url")
    except TransientWriteError as exc:
        log.error("slack: could not answer through response_url (%s)", exc)
