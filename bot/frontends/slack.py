"""The Slack frontend (slack-bolt): mentions answered in threads, thread follow-ups, direct
messages and the assistant view, slash commands.

A mention is answered in a thread under it (bot/frontends/slack_reply.py: Slack's chat
streaming where the workspace has it, else a placeholder grown by chat.update). A
conversation is the thread: later messages there continue it without a mention, with the
thread (`conversations.replies`) as history. Direct messages need no mention; the assistant
view offers suggested prompts. Text files shared with a question join it (bot/attachments.py),
downloaded with the bot token (files:read). Slash commands, built from bot/command_table.py, are acked at
once and answered in the channel; /help, /stats, refusals and errors only to the asker.
Socket Mode (the default) needs no public URL; HTTP mode serves Bolt's request URL on a port
behind bot/frontends/slack_http.py's checks. The steps from question to answer are the
shared intake's (bot/frontends/intake.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import OrderedDict
from typing import Any

from bot.attachments import AttachedFile, FileRefused
from bot.command_table import BY_NAME, offered
from bot.commands import as_command
from bot.frontends.intake import Intake, Places, Question
from bot.frontends.mrkdwn import from_slack
from bot.frontends.registry import FrontendType
from bot.frontends.slack_reply import (
    CommandReply, PrivateReply, SlackBudgets, ThreadReply, Workspace, respond_privately,
)
from bot.frontends.slack_settings import SlackSettings, check_credentials, parse_slack_settings
from bot.host import Host
from bot.reasoning import without_thinking

log = logging.getLogger(__name__)

COMMANDS = tuple(spec.name for spec in offered(host_keeps_history=False))
# "/model" or, where a workspace already has one, a renamed "/mb-model" in the manifest
_COMMAND = re.compile(rf"^/(?:[\w-]+-)?(?P<name>{'|'.join(COMMANDS)})$")
_FOOTER_LINE = re.compile(r"\n?_[^\n]* tok/s · [^\n]*_$")
_NOT_SAID = ("…", "queued:", "⚠️", "error:")  # placeholders and errors: not what the model said
THREAD_LIMIT = 1000  # messages read from a thread for history (trimmed by tokens afterwards)
_REMEMBERED = 10_000  # handled messages, commands and known threads kept for de-duplication
SHUTDOWN_TIMEOUT = 10.0
DOWNLOAD_TIMEOUT = 60.0  # seconds for one shared file (files:read)
NOT_HERE = "I am not set up to answer in this channel."
SUGGESTED_PROMPTS = [
    {"title": "Ask a question", "message": "What is 4-bit NF4 quantization, in two sentences?"},
    {"title": "Which models are there?", "message": "/models"},
    {"title": "Show the model's layers", "message": "show me the layers"},
]


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


class SlackFrontend:
    def __init__(self, host: Host, settings: SlackSettings):
        from slack_bolt.async_app import AsyncApp

        self.host = host
        self.settings = settings
        self.client = web_client(settings)
        self.app = AsyncApp(client=self.client, signing_secret=settings.signing_secret or None,
                            request_verification_enabled=settings.mode == "http")
        self.workspace = Workspace(self.client, settings, SlackBudgets(settings))
        self.places = Places(frozenset(settings.channels), settings.allow_dms)
        self.intake = Intake(host, frontend="slack", model_switch=settings.model_switch, compare=settings.compare,
                             settings_change=settings.settings_change)
        self.bot_user_id = ""
        self.bot_id = ""
        self._handled = _Recent()  # (channel, ts) of messages answered, and commands: retries and replays
        self._threads = _Recent()  # (channel, thread_ts) -> whether the bot took part in it
        self._stopped = asyncio.Event()
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

            from bot.frontends.slack_http import guarded_web_app

            self._runner = web.AppRunner(guarded_web_app(self.app, self.settings))
            await self._runner.setup()
            await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
            self.port = self._runner.addresses[0][1]  # the one bound, where the setting is 0
            log.info("slack: serving the request URL at http://%s:%s%s", self.settings.host, self.port,
                     self.settings.path)
        self.host.readiness.connected("slack", True)  # Socket Mode's reconnects are slack_sdk's own
        await self._stopped.wait()

    async def drain(self, timeout: float = SHUTDOWN_TIMEOUT) -> int:
        """Take no new questions; end each answer in progress with the shutdown notice.
        Returns how many answers ran out of time."""
        return await self.intake.shutdown(timeout)

    async def close(self) -> None:
        await self.intake.shutdown(SHUTDOWN_TIMEOUT)  # a no-op after drain(); otherwise each answer says so first
        self.host.readiness.connected("slack", False)
        self._stopped.set()
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
        self.workspace.team_id = auth.get("team_id") or ""

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

        @self.app.event("assistant_thread_started")
        async def assistant_thread_started(event: dict) -> None:
            await self.on_assistant_thread(event.get("assistant_thread") or {})

        @self.app.event("assistant_thread_context_changed")
        async def assistant_context_changed() -> None:
            pass  # the context (which channel the user looks at) does not change the answers

        @self.app.command(_COMMAND)
        async def command(ack, command: dict, respond) -> None:
            await ack()  # within Slack's 3 s; the answer follows
            await self.on_command(command, respond)

    # -- messages ---------------------------------------------------------------------------------
    async def on_message(self, event: dict, mentioned: bool) -> None:
        channel, ts, user = event.get("channel", ""), event.get("ts", ""), event.get("user")
        if not user or user == self.bot_user_id or event.get("bot_id"):
            return  # never answer itself or other bots (loops)
        dm = event.get("channel_type") == "im" or channel.startswith("D")
        if not self.places.allows(channel, dm=dm):
            return
        mark = f"<@{self.bot_user_id}>"
        if not mentioned and not dm and mark in event.get("text", ""):
            return  # the app_mention event for this message answers it
        thread_ts = event.get("thread_ts") or ts
        if not mentioned and not dm and (thread_ts == ts or not await self._took_part(channel, thread_ts)):
            return  # unaddressed: neither a mention nor in a thread the bot answered in
        if (channel, ts) in self._handled:
            return  # a Slack retry (X-Slack-Retry-Num) of a message already answered
        self._handled.put((channel, ts))
        self._threads.put((channel, thread_ts), True)
        in_thread = thread_ts != ts
        question = Question(
            key=(channel, ts), channel=channel, user=user,
            text=as_command(from_slack(event.get("text", ""), drop_user=self.bot_user_id)),
            is_admin=user in self.settings.admins,
            read_history=(lambda: self._thread_history(channel, thread_ts, ts)) if in_thread else None,
            files=shared_files(event, self.settings.bot_token))
        await self.intake.answer(question, ThreadReply(self.workspace, channel, thread_ts, user, dm))

    def on_deleted(self, event: dict) -> None:
        """A deleted question needs no answer: stop generating it (and free its batch slot)."""
        ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
        self.intake.stop((event.get("channel", ""), ts))

    async def on_assistant_thread(self, thread: dict) -> None:
        """The user opened the assistant view: offer a few things to ask."""
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if not channel or not thread_ts or not self.places.allows(channel, dm=True):
            return
        from slack_sdk.errors import SlackApiError

        try:
            await self.client.assistant_threads_setSuggestedPrompts(
                channel_id=channel, thread_ts=thread_ts, title="Ask an open-weights model", prompts=SUGGESTED_PROMPTS)
        except SlackApiError as exc:
            log.info("slack: no suggested prompts in %s (%s)", channel, exc.response.get("error"))

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
                if message.get("subtype"):
                    continue  # an assistant thread's opening, not something the model said
                content = _FOOTER_LINE.sub("", message.get("text", ""))
                if content.startswith(_NOT_SAID):
                    continue
                role = "assistant"
            elif message.get("bot_id") or message.get("subtype") not in (None, "file_share", "thread_broadcast"):
                continue  # other bots and channel events are not part of the conversation
            else:
                role = "user"
            content = from_slack(message.get("text", "") if role == "user" else content, drop_user=self.bot_user_id)
            if turns and turns[-1]["role"] == role == "assistant":
                turns[-1]["content"] = join_parts(turns[-1]["content"], content)  # one reply, split in messages
            else:
                turns.append({"role": role, "content": content})
        return without_thinking(turns)

    def _is_mine(self, message: dict) -> bool:
        return message.get("user") == self.bot_user_id or (bool(self.bot_id) and message.get("bot_id") == self.bot_id)

    # -- slash commands ---------------------------------------------------------------------------
    async def on_command(self, command: dict, respond) -> None:
        channel, user = command.get("channel_id", ""), command.get("user_id", "")
        replay = command.get("trigger_id") or (channel, user, command.get("command"), command.get("text"))
        if ("command", replay) in self._handled:
            return  # the same signed request delivered again: answered once
        self._handled.put(("command", replay))
        spec = BY_NAME[_COMMAND.match(command.get("command", "")).group("name")]
        text = f"/{spec.name} {(command.get('text') or '').strip()}".strip()
        dm = channel.startswith("D") or command.get("channel_name") == "directmessage"
        if not self.places.allows(channel, dm=dm):
            await respond_privately(respond, NOT_HERE)
            return
        if spec.private:
            reply = PrivateReply(respond)
        else:
            reply = CommandReply(self.workspace, channel, f"<@{user}> `{_shorten(text)}`", respond)
        question = Question(key=("command", replay), channel=channel, user=user, text=text,
                            is_admin=user in self.settings.admins)
        await self.intake.answer(question, reply)


def join_parts(first: str, second: str) -> str:
    """Two messages of one split reply, read back (stripped): a code block that the split closed
    and reopened is one block again; otherwise a line break stands where the cut was."""
    if first.endswith("\n```") and second.startswith("```\n"):
        return first[: -len("```")] + second[len("```\n"):]
    return f"{first}\n{second}"


def _shorten(text: str, limit: int = 150) -> str:
    text = " ".join(text.replace("`", "'").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shared_files(event: dict, token: str) -> tuple[AttachedFile, ...]:
    """The files shared with a message (the `files` of a `message` event, subtype file_share,
    or of an `app_mention`); each is downloaded with the bot token only once its name, type
    and size passed bot/attachments.py's checks."""
    files = [f for f in event.get("files") or [] if f.get("mode") != "tombstone"]  # tombstone: deleted
    return tuple(AttachedFile(_file_name(f), int(f.get("size") or 0), f.get("mimetype"),
                              functools.partial(download_file, f, token)) for f in files)


async def download_file(file: dict, token: str) -> bytes:
    """A file's bytes from url_private(_download), with `Authorization: Bearer <bot token>`.
    Slack answers a token without files:read (or none) with its sign-in page, HTML with status
    200: for a file that is not HTML itself that means the scope is missing."""
    import aiohttp

    url = file.get("url_private_download") or file.get("url_private")
    if not url:
        raise FileRefused(f"I could not download {_file_name(file)}: Slack did not say where it is.")
    timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            response.raise_for_status()
            if response.content_type == "text/html" and not _is_html(file):
                log.warning("slack: downloading %s gave an HTML page: the bot token lacks files:read", file.get("id"))
                raise FileRefused(
                    f"I could not download {_file_name(file)}: Slack sent its sign-in page instead, which means my "
                    "token lacks the files:read scope. An admin can add files:read under OAuth & Permissions → "
                    "Bot Token Scopes (or paste docs/slack-manifest.yaml), then reinstall the app.")
            return await response.read()


def _file_name(file: dict) -> str:
    return file.get("name") or file.get("title") or file.get("id") or "the file"


def _is_html(file: dict) -> bool:
    return (file.get("filetype") == "html" or (file.get("mimetype") or "").startswith("text/html")
            or _file_name(file).lower().endswith((".html", ".htm")))


FRONTEND = FrontendType("slack", parse_settings=parse_slack_settings, check_ready=check_credentials,
                        create=SlackFrontend)
