"""The Slack frontend (slack-bolt): mentions answered in threads, thread follow-ups, slash commands.

A mention gets a placeholder in a thread under it at once, which grows by `chat.update`
(bot/streaming.py, at most one edit per 1.5 s) and continues in new thread messages past
3500 characters. A conversation is the thread: later messages there continue it without a
mention, with the thread (`conversations.replies`) as history. Slash commands are acked at
once and answered in the channel. Markdown from the model is converted to Slack's mrkdwn.
Socket Mode (the default) needs no public URL; HTTP mode serves Bolt's request URL on a port.
Everything else (models, commands, errors) is the host's, shared with the other frontends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from bot.commands import as_command, model_switch_refusal
from bot.frontends.message_reply import MessageReplyBase
from bot.frontends.mrkdwn import ends_in_code, from_slack, to_mrkdwn
from bot.frontends.slack_settings import SlackSettings
from bot.host import ChatEvent, Host
from bot.streaming import StreamedMessage

log = logging.getLogger(__name__)

COMMANDS = ("model", "models", "layers", "compare", "stop", "stats", "help")
# "/model" or, where a workspace already has one, a renamed "/mb-model" in the manifest
_COMMAND = re.compile(rf"^/(?:[\w-]+-)?(?P<name>{'|'.join(COMMANDS)})$")
_FOOTER_LINE = re.compile(r"\n?_[^\n]* tok/s · [^\n]*_$")
_NOT_SAID = ("…", "queued:", "⚠️", "error:")  # placeholders and errors: not what the model said
THREAD_LIMIT = 1000  # messages read from a thread for history (trimmed by tokens afterwards)
_REMEMBERED = 10_000  # handled messages and known threads kept for de-duplication


def slack_footer(footer: str) -> str:
    """Slack has no small print in message text: the context line is in italics."""
    return f"\n_{footer}_"


def web_client(settings: SlackSettings):
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler, async_default_handlers
    from slack_sdk.web.async_client import AsyncWebClient

    # slack_sdk retries only connection errors by default: 429s (Retry-After) need their handler
    handlers = async_default_handlers() + [AsyncRateLimitErrorRetryHandler(max_retry_count=settings.rate_limit_retries)]
    return AsyncWebClient(token=settings.bot_token, base_url=settings.api_base, retry_handlers=handlers)


class _Recent:
    """A bounded set: what was seen lately (Slack retries come within minutes)."""

    def __init__(self, size: int = _REMEMBERED):
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._size = size

    def get(self, key: Any, default: Any = None) -> Any:
        return self._items.get(key, default)

    def put(self, key: Any, value: Any = True) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __contains__(self, key: Any) -> bool:
        return key in self._items


class EditBudget:
    """chat.update is rate limited per workspace (Tier 3, about 50 a minute), not per message:
    the more answers grow at once, the less often each one is edited, so that ten people
    asking together do not run into 429s. Final edits are never held back."""

    def __init__(self, interval: float, per_minute: int):
        self.base = interval
        self.per_minute = per_minute
        self._streams: weakref.WeakSet[StreamedMessage] = weakref.WeakSet()

    def add(self, stream: StreamedMessage) -> None:
        self._streams.add(stream)
        self.spread()

    def spread(self) -> float:
        """Share the budget among the answers still growing; returns the interval each gets."""
        growing = [stream for stream in self._streams if not stream.ended]
        interval = max(self.base, len(growing) * 60 / self.per_minute)
        for stream in growing:
            stream.interval = interval
        return interval


class SlackFrontend:
    def __init__(self, host: Host, settings: SlackSettings):
        from slack_bolt.async_app import AsyncApp

        self.host = host
        self.settings = settings
        self.client = web_client(settings)
        self.app = AsyncApp(client=self.client, signing_secret=settings.signing_secret or None,
                            request_verification_enabled=settings.mode == "http")
        self.bot_user_id = ""
        self.bot_id = ""
        self._handled = _Recent()  # (channel, ts) of messages answered: retries and double events
        self._threads = _Recent()  # (channel, thread_ts) -> whether the bot took part in it
        self._answering: dict[tuple[str, str], asyncio.Task] = {}  # question -> the task answering it
        self._stopped = asyncio.Event()
        self.edits = EditBudget(settings.edit_interval, settings.edits_per_minute)
        self._socket = None
        self._runner = None
        self.port = 0  # HTTP mode, once serving
        self._register()

    # -- lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        from slack_sdk.errors import SlackApiError

        await self._identify()
        if self.settings.mode == "socket":
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            try:  # slack_sdk would retry a refused token forever: ask once first, and say why
                await self.client.apps_connections_open(app_token=self.settings.app_token)
            except SlackApiError as exc:
                raise RuntimeError(f"slack: the app-level token was refused ({exc.response.get('error')}); check "
                                   "SLACK_APP_TOKEN (Basic Information → App-Level Tokens, scope "
                                   "connections:write) and that Socket Mode is on") from None
            self._socket = AsyncSocketModeHandler(self.app, self.settings.app_token)
            await self._socket.connect_async()
            log.info("slack: connected in Socket Mode as <@%s>", self.bot_user_id)
        else:
            from aiohttp import web

            self._runner = web.AppRunner(self.app.web_app(path=self.settings.path, port=self.settings.port))
            await self._runner.setup()
            await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
            self.port = self._runner.addresses[0][1]  # the one bound, where the setting is 0
            log.info("slack: serving the request URL at http://%s:%s%s", self.settings.host, self.port,
                     self.settings.path)
        await self._stopped.wait()

    async def close(self) -> None:
        self._stopped.set()
        answering = list(self._answering.values())
        for task in answering:
            task.cancel()  # each says so in its thread before the connection goes
        if answering:
            await asyncio.wait(answering, timeout=5)
        if self._socket is not None:
            await self._socket.close_async()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _identify(self) -> None:
        """Who the bot is (to see its own messages and mentions); a wrong token fails here, clearly."""
        from slack_sdk.errors import SlackApiError

        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise RuntimeError(f"slack: the bot token was refused ({exc.response.get('error')}); "
                               "check SLACK_BOT_TOKEN (OAuth & Permissions → Bot User OAuth Token)") from None
        self.bot_user_id, self.bot_id = auth["user_id"], auth.get("bot_id") or ""

    def _register(self) -> None:
        @self.app.event("app_mention")
        async def mention(event: dict) -> None:
            await self.on_message(event, mentioned=True)

        @self.app.event("message")
        async def message(event: dict) -> None:
            if event.get("subtype") == "message_deleted":
                self.on_deleted(event)
            elif event.get("subtype") in (None, "thread_broadcast", "file_share"):
                await self.on_message(event, mentioned=False)

        @self.app.command(_COMMAND)
        async def command(ack, command: dict, respond) -> None:
            await ack()  # within Slack's 3 s; the answer follows in the channel
            await self.on_command(command, respond)

    # -- messages ---------------------------------------------------------------------------------
    async def on_message(self, event: dict, mentioned: bool) -> None:
        channel, ts, user = event.get("channel", ""), event.get("ts", ""), event.get("user")
        if not user or user == self.bot_user_id or event.get("bot_id"):
            return  # never answer itself or other bots (loops)
        if self.settings.channels and channel not in self.settings.channels:
            return
        mark = f"<@{self.bot_user_id}>"
        if not mentioned and mark in event.get("text", ""):
            return  # the app_mention event for this message answers it
        thread_ts = event.get("thread_ts") or ts
        if not mentioned and (thread_ts == ts or not await self._took_part(channel, thread_ts)):
            return  # unaddressed: neither a mention nor in a thread the bot answered in
        if (channel, ts) in self._handled:
            return  # a Slack retry (X-Slack-Retry-Num) of a message already answered
        self._handled.put((channel, ts))
        self._threads.put((channel, thread_ts), True)
        text = as_command(from_slack(event.get("text", ""), drop_user=self.bot_user_id))
        reply = SlackReply(self.client, channel, thread_ts, self.settings, self.edits)
        if not await reply.start():
            return
        self._answering[(channel, ts)] = asyncio.current_task()
        try:
            refusal = self._refuse_model_switch(user, text)
            if refusal:
                await reply.send(refusal)
                return
            in_thread = thread_ts != ts
            history = await self._thread_history(channel, thread_ts, ts) if in_thread and not text.startswith("/") else []
            await self.host.handle(ChatEvent(channel=channel, user=user, text=text, history=history), reply)
        except asyncio.CancelledError:
            # the question was deleted, or the bot stops: the host has cancelled the worker job
            why = "the bot is shutting down" if self._stopped.is_set() else "the message it answered was deleted"
            await reply.close(stopped=f"stopped: {why}")
            return
        finally:
            self._answering.pop((channel, ts), None)
        await reply.close()

    def on_deleted(self, event: dict) -> None:
        """A deleted question needs no answer: stop generating it (and free its batch slot)."""
        ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
        task = self._answering.get((event.get("channel", ""), ts))
        if task is not None:
            task.cancel()

    async def _took_part(self, channel: str, thread_ts: str) -> bool:
        """Whether the bot has a message in the thread (remembered, else asked once)."""
        known = self._threads.get((channel, thread_ts))
        if known is None:
            thread = await self._thread(channel, thread_ts)
            known = any(self._is_mine(m) for m in thread)
            self._threads.put((channel, thread_ts), known)
        return known

    async def _thread(self, channel: str, thread_ts: str) -> list[dict]:
        from slack_sdk.errors import SlackApiError

        messages: list[dict] = []
        cursor = None
        try:
            while len(messages) < THREAD_LIMIT:
                page = await self.client.conversations_replies(channel=channel, ts=thread_ts, limit=200, cursor=cursor)
                messages += page.get("messages", [])
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not page.get("has_more") or not cursor:
                    break
        except SlackApiError as exc:  # e.g. missing channels:history: answer without history
            log.warning("slack: cannot read thread %s in %s (%s)", thread_ts, channel, exc.response.get("error"))
        return messages

    async def _thread_history(self, channel: str, thread_ts: str, before_ts: str) -> list[dict]:
        """The thread up to the question, oldest first; the bot's split replies are joined."""
        turns: list[dict] = []
        for message in await self._thread(channel, thread_ts):
            if float(message.get("ts", 0)) >= float(before_ts):
                continue
            if self._is_mine(message):
                content = _FOOTER_LINE.sub("", message.get("text", ""))
                if content.startswith(_NOT_SAID):
                    continue
                role = "assistant"
            elif message.get("bot_id") or message.get("subtype"):
                continue  # other bots and channel events are not part of the conversation
            else:
                role = "user"
            content = from_slack(message.get("text", "") if role == "user" else content, drop_user=self.bot_user_id)
            if turns and turns[-1]["role"] == role == "assistant":
                turns[-1]["content"] = join_parts(turns[-1]["content"], content)  # one reply, split in messages
            else:
                turns.append({"role": role, "content": content})
        return [turn for turn in turns if turn["content"].strip()]

    def _is_mine(self, message: dict) -> bool:
        return message.get("user") == self.bot_user_id or (bool(self.bot_id) and message.get("bot_id") == self.bot_id)

    def _refuse_model_switch(self, user: str, text: str) -> str | None:
        return model_switch_refusal(text, self.settings.model_switch, user in self.settings.admins)

    # -- slash commands ---------------------------------------------------------------------------
    async def on_command(self, command: dict, respond) -> None:
        channel, user = command.get("channel_id", ""), command.get("user_id", "")
        name = _COMMAND.match(command.get("command", "")).group("name")
        args = (command.get("text") or "").strip()
        text = f"/{name} {args}".strip()
        if self.settings.channels and channel not in self.settings.channels:
            await respond(text="I am not set up to answer in this channel.", response_type="ephemeral")
            return
        reply = CommandReply(self.client, channel, f"<@{user}> `{_shorten(text)}`", self.settings, self.edits)
        if not await reply.start():
            await respond(text="I cannot post in this channel: add me first (`/invite @modelbot`), then try again.",
                          response_type="ephemeral")
            return
        try:
            refusal = self._refuse_model_switch(user, text)
            if refusal:
                await reply.send(refusal)
                return
            await self.host.handle(ChatEvent(channel=channel, user=user, text=text, history=[]), reply)
        finally:
            await reply.close()


def join_parts(first: str, second: str) -> str:
    """Two messages of one split reply, read back (stripped): a code block that the split closed
    and reopened is one block again; otherwise a line break stands where the cut was."""
    if first.endswith("\n```") and second.startswith("```\n"):
        return first[: -len("```")] + second[len("```\n"):]
    return f"{first}\n{second}"


def _shorten(text: str, limit: int = 150) -> str:
    text = " ".join(text.replace("`", "'").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class PostedMessage:
    """A message the bot posted: where it is, and the Markdown it shows (before conversion)."""

    channel: str
    ts: str
    markdown: str
    opens_in_code: bool  # continues a code block that the previous part left open
    prefix: str = ""  # shown above the converted text (a command's invocation line)

    def render(self) -> str:
        body = to_mrkdwn(self.markdown, self.opens_in_code)
        return f"{self.prefix}\n{body}" if self.prefix else body


class SlackReply(MessageReplyBase):
    """Answers in one thread of a channel (a mention's), converted to mrkdwn; chat.update edits."""

    def __init__(self, client: Any, channel: str, thread_ts: str | None, settings: SlackSettings,
                 edits: EditBudget):
        super().__init__(settings.message_limit, settings.edit_interval, footer_format=slack_footer)
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.edits = edits

    def _new_stream(self) -> StreamedMessage:
        stream = super()._new_stream()
        self.edits.add(stream)
        return stream

    async def start(self) -> bool:
        from slack_sdk.errors import SlackApiError

        try:
            await self._start_placeholder()
        except SlackApiError as exc:
            log.error("slack: cannot post in channel %s (%s); invite the app to the channel, and check its "
                      "chat:write scope", self.channel, exc.response.get("error"))
            return False
        return True

    async def send_file(self, filename: str, content: str, caption: str = "") -> None:
        from slack_sdk.errors import SlackApiError

        try:
            await self.client.files_upload_v2(channel=self.channel, thread_ts=self.thread_ts, content=content,
                                              filename=filename, title=filename, initial_comment=caption or None)
        except SlackApiError as exc:  # e.g. no files:write scope: the same text as a snippet instead
            log.warning("slack: file upload refused in %s (%s); sending it as text", self.channel,
                        exc.response.get("error"))
            await self.send(f"{caption}\n```\n{content}\n```" if caption else f"```\n{content}\n```")

    def _new_message(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        opens = previous is not None and ends_in_code(previous.markdown, previous.opens_in_code)
        return PostedMessage(self.channel, "", text, opens)

    async def _post(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        message = self._new_message(text, previous)
        posted = await self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts,
                                                    text=message.render(), unfurl_links=False, unfurl_media=False)
        message.ts = posted["ts"]
        return message

    async def _edit(self, message: PostedMessage, text: str) -> PostedMessage | None:
        from slack_sdk.errors import SlackApiError

        message.markdown = text
        self.edits.spread()  # answers that ended since leave their share to the others
        try:
            await self.client.chat_update(channel=message.channel, ts=message.ts, text=message.render())
        except SlackApiError as exc:
            if exc.response.get("error") in ("message_not_found", "cant_update_message"):
                return await self._post(text, None)  # deleted under us: the rest goes in a new message
            # one lost edit is not worth failing the answer: the next edit carries the whole text again
            log.warning("slack: chat.update failed in %s (%s)", message.channel, exc.response.get("error"))
        return None


class CommandReply(SlackReply):
    """Answers to a slash command: the first message in the channel, under the invocation line
    ("@user `/compare …`"); whatever follows (a second model, a file) in its thread."""

    def __init__(self, client: Any, channel: str, invocation: str, settings: SlackSettings, edits: EditBudget):
        super().__init__(client, channel, None, settings, edits)
        self.invocation = invocation

    async def _post(self, text: str, previous: PostedMessage | None) -> PostedMessage:
        if self.thread_ts is not None:
            return await super()._post(text, previous)
        message = self._new_message(text, previous)
        message.prefix = self.invocation
        posted = await self.client.chat_postMessage(channel=self.channel, text=message.render(),
                                                    unfurl_links=False, unfurl_media=False)
        message.ts = self.thread_ts = posted["ts"]  # the anchor of everything else
        return message
