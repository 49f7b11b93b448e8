"""A local Slack-compatible server for testing the real slack_sdk / slack-bolt over the wire.

The emulator (aiohttp on 127.0.0.1, ephemeral port) serves:

- the Web API at ``/api/<method>``: form-encoded, JSON or query-string parameters, token
  from ``Authorization: Bearer`` (or a ``token`` parameter).  Point slack_sdk at it with
  ``AsyncWebClient(token=emu.bot_token, base_url=emu.api_base)`` (``api_base`` ends with the
  slash slack_sdk needs);
- the upload URLs that ``files.getUploadURLExternal`` hands out (``files_upload_v2``), and the
  files' ``url_private`` downloads: bytes only for the bot token with ``files:read``, else
  Slack's sign-in page (HTML, status 200); ``user_file`` makes a file a user shares with a message;
- Socket Mode: ``apps.connections.open`` (app token) returns a ``ws://`` URL; the emulator
  sends ``hello`` and then whatever ``push_socket_event`` pushes, and records the acks;
- ``response_url`` endpoints for slash commands (``response_url_for``);
- for HTTP mode, ``signed_request`` / ``deliver`` sign bodies the way Slack does, for a
  bolt app served at ``/slack/events``; ``sign`` / ``deliver_raw`` send exact (malformed) bytes.

The world is fixed: one team, the bot user, two channels, the human users that tests
create and their DM (``im``) channels with the bot.  Every Web API call is recorded in
``emu.requests``; every message (users' and the bot's) is stored in ``emu.messages`` with its
edit history.  Faults (429 and others) are injected with ``fail_next``; ``outage`` answers
every Web API call with a 5xx for a while.  Slack's rate limits are enforced
(``DEFAULT_RATE_LIMITS``, refusals in ``emu.rate_limited``, honest ``Retry-After``).  The chat
streaming methods (``chat.startStream`` / ``appendStream`` / ``stopStream``, Markdown in) and
the assistant thread methods (status, suggested prompts, title) are modelled, and
``push_assistant_thread_started`` / ``push_dm`` play a user in the app's assistant view.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import mimetypes
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from emulator_base import LocalServer, assert_no_swallowed_errors, max_in_window, take_fault


@dataclass
class ApiCall:
    """One Web API request as it arrived (faulted ones included)."""

    method: str  # e.g. "chat.postMessage"
    params: dict  # query, form and JSON parameters merged; JSON-in-form values left as strings
    time: float  # time.monotonic() at arrival
    status: int | None = None  # HTTP status returned
    token: str | None = None
    ok: bool | None = None  # the "ok" field of the answer
    error: str | None = None  # the "error" field of the answer


@dataclass
class SlackMessage:
    """A message as the emulator knows it; ``payload()`` is what goes over the wire."""

    channel: str
    ts: str
    user: str
    text: str
    blocks: list | None = None
    thread_ts: str | None = None
    bot_id: str | None = None
    # "user", "api" (chat.postMessage / file share), "response_url", "ephemeral", "stream"
    # (chat.startStream) or "assistant_thread" (the root Slack creates for an assistant thread)
    origin: str = "user"
    files: list = field(default_factory=list)  # file ids
    history: list = field(default_factory=list)  # [(text, blocks, time.monotonic())], creation first
    deleted: bool = False
    edited: dict | None = None
    markdown: str = ""  # streamed messages: the Markdown received so far (also their text)
    streaming: bool = False  # between chat.startStream and chat.stopStream
    subtype: str | None = None

    def payload(self) -> dict:
        data: dict = {"type": "message", "user": self.user, "text": self.text, "ts": self.ts}
        if self.subtype:
            data["subtype"] = self.subtype
        if self.blocks is not None:
            data["blocks"] = self.blocks
        if self.bot_id:
            data["bot_id"] = self.bot_id
            data["app_id"] = EMU_APP_ID
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        if self.edited:
            data["edited"] = self.edited
        return data


@dataclass
class UploadedFile:
    id: str
    filename: str
    length: int
    data: bytes | None = None  # None until the upload URL received it
    title: str | None = None
    channel: str | None = None
    thread_ts: str | None = None
    completed: bool = False
    mimetype: str = "application/octet-stream"
    filetype: str = "binary"
    user: str = ""  # who shared it ("": the bot, through files_upload_v2)


@dataclass
class Envelope:
    """A Socket Mode envelope sent to the app."""

    envelope_id: str
    type: str
    payload: dict
    time: float
    retry_attempt: int = 0


@dataclass
class Ack:
    """A Socket Mode acknowledgement received from the app."""

    envelope_id: str
    time: float
    payload: dict | None  # what the app answered with (slash commands: the ack's message)


@dataclass
class _Fault:
    method: str
    status: int
    retry_after: int
    times: int
    error: str | None


EMU_TEAM_ID, EMU_APP_ID = "T0EMU0001", "A0EMU0001"
BOT_USER_ID, BOT_ID = "U0BOT0001", "B0BOT0001"

# method -> (calls, seconds): at most that many calls in any sliding window of that length.
# Per workspace, except the methods in PER_CHANNEL_LIMITS, which count per channel.
DEFAULT_RATE_LIMITS: dict[str, tuple[int, float]] = {
    "chat.update": (50, 60.0),  # Tier 3
    "chat.startStream": (50, 60.0),
    "chat.appendStream": (100, 60.0),  # Tier 4
    "chat.stopStream": (50, 60.0),
    "chat.postMessage": (5, 5.0),  # "1 per second per channel, short bursts allowed"
}
PER_CHANNEL_LIMITS = frozenset({"chat.postMessage"})
STREAMING_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")
# The scopes the app was installed with (docs/slack-manifest.yaml's); Slack reports a token's
# scopes in the `x-oauth-scopes` header of every Web API response to it.
DEFAULT_BOT_SCOPES = ("app_mentions:read", "channels:history", "groups:history", "im:history", "chat:write",
                      "assistant:write", "commands", "files:write", "files:read")
MARKDOWN_LIMIT = 12_000  # characters of markdown_text per streaming call
# Slack's `filetype` for a few suffixes (others: the suffix itself)
FILETYPES = {"md": "markdown", "txt": "text", "py": "python", "js": "javascript", "yml": "yaml", "jpg": "jpg"}
# what files.slack.com answers a download without a valid token with files:read: status 200
SIGN_IN_PAGE = "<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")


def _maybe_json(value: Any) -> Any:
    """Form-encoded calls carry blocks/files as JSON strings; JSON calls carry lists."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class SlackApiError(Exception):
    """Raised inside a handler: answered as {"ok": false, "error": ...} with HTTP 200."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


class SlackEmulator(LocalServer):
    def __init__(self, *, bot_token: str = "xoxb-test", app_token: str = "xapp-test",
                 rate_limits: dict[str, tuple[int, float]] | None = DEFAULT_RATE_LIMITS,
                 streaming: bool = True, streaming_error: str = "unknown_method",
                 scopes: tuple[str, ...] = DEFAULT_BOT_SCOPES):
        """rate_limits replaces DEFAULT_RATE_LIMITS entirely (None or {}: no limits);
        streaming=False answers the chat streaming methods with `streaming_error`, as a
        workspace without the feature would; scopes: what the bot token was granted."""
        super().__init__()
        self.scopes = tuple(scopes)
        self.bot_token, self.app_token = bot_token, app_token
        self.team_id, self.app_id = EMU_TEAM_ID, EMU_APP_ID
        self.bot_user_id, self.bot_id = BOT_USER_ID, BOT_ID
        self.users: dict[str, dict] = {self.bot_user_id: {"id": self.bot_user_id, "name": "modelbot",
                                                          "is_bot": True}}
        self.channels: dict[str, str] = {"C0GENERAL1": "general", "C0RANDOM01": "random"}
        self.channel, self.other_channel = "C0GENERAL1", "C0RANDOM01"
        self.requests: list[ApiCall] = []
        self.messages: dict[str, SlackMessage] = {}  # by ts (unique across channels here)
        self.files: dict[str, UploadedFile] = {}
        self.envelopes: dict[str, Envelope] = {}
        self.acks: dict[str, Ack] = {}
        self.unknown_acks: list[dict] = []  # acks for envelope ids that were never sent
        self.commands: dict[str, dict] = {}  # command_id -> slash command payload
        self.response_posts: dict[str, list[dict]] = {}  # command_id -> [{"json", "time"}]
        self.socket_connections: list[dict] = []  # query of each websocket connect
        self.ims: dict[str, str] = {}  # DM channel id -> the human user it is with
        self.rate_limits = dict(rate_limits or {})
        self.rate_limited: list[ApiCall] = []  # calls the limiter refused (not fail_next faults)
        self.streaming, self.streaming_error = streaming, streaming_error
        self.statuses: dict[tuple[str, str], list[tuple[str, float]]] = {}  # (channel, thread) -> [(status, t)]
        self.suggested_prompts: list[dict] = []
        self.titles: dict[tuple[str, str], str] = {}  # (channel, thread) -> latest title
        self._admitted: dict[tuple, deque[float]] = {}  # limiter key -> times of admitted calls
        self._outage_until, self._outage_status = 0.0, 500
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._connected = asyncio.Condition()
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1)
        self._last_ts = 0.0
        self._http: aiohttp.ClientSession | None = None
        self.downloads: list[tuple[str, bool]] = []  # (file id, whether the bytes were served)

    # ---- world -------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}0EMU{next(self._ids):06d}"

    def _new_ts(self) -> str:
        # Slack ts: "seconds.microseconds", unique and increasing within a channel.
        now = max(time.time(), self._last_ts + 0.000001)
        self._last_ts = now
        return f"{now:.6f}"

    def user(self, name: str) -> str:
        """Create a human user; returns its id."""
        uid = self._new_id("U")
        self.users[uid] = {"id": uid, "name": name, "is_bot": False}
        return uid

    def im_channel(self, user_id: str) -> str:
        """The DM channel ("D…") between `user_id` and the bot, created on first use."""
        for cid, uid in self.ims.items():
            if uid == user_id:
                return cid
        cid = self._new_id("D")
        self.ims[cid] = user_id
        return cid

    def _channel_id(self, channel: str | None) -> str:
        if channel is None:
            raise SlackApiError("channel_not_found")
        if channel in self.channels or channel in self.ims:
            return channel
        name = channel.lstrip("#")
        for cid, cname in self.channels.items():
            if cname == name:
                return cid
        raise SlackApiError("channel_not_found")

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """The Web API base URL, with the trailing slash slack_sdk's base_url needs."""
        return self.http_base + "/api/"

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files/{file_id}/{name}", self._download)
        app.router.add_get("/link/", self._socket)
        app.router.add_post("/response/{command_id}", self._response_url)
        return app

    async def _close_connections(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1000)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ---- fault injection ---------------------------------------------------------------

    def fail_next(self, method: str, status: int = 429, retry_after: int = 1, times: int = 1,
                  error: str | None = None) -> None:
        """Answer the next `times` calls of Web API `method` ("*" for any) with `status`.

        429: ``Retry-After: <retry_after>`` (an integer, as slack_sdk reads it) and
        ``{"ok": false, "error": "ratelimited"}``; slack_sdk retries it only when the client
        has an ``AsyncRateLimitErrorRetryHandler`` (not among the default handlers), sleeping
        Retry-After plus up to one second of jitter.  Other statuses answer
        ``{"ok": false, "error": error or a default}``; status 200 with an error (e.g.
        "not_in_channel") is how Slack reports most failures.
        """
        self._faults.append(_Fault(method, status, int(retry_after), times, error))

    def _take_fault(self, method: str) -> _Fault | None:
        return take_fault(self._faults, lambda f: f.method in ("*", method))

    @staticmethod
    def _fault_refusal(fault: _Fault) -> tuple[int, str, dict | None]:
        if fault.status == 429:
            return 429, fault.error or "ratelimited", {"Retry-After": str(fault.retry_after)}
        default = "internal_error" if fault.status >= 500 else "invalid_request"
        return fault.status, fault.error or default, None

    def outage(self, seconds: float, status: int = 500) -> None:
        """For `seconds` from now answer every Web API call with `status` (503:
        "service_unavailable", else "internal_error"), before any handler runs.  Socket Mode
        and response_url keep working."""
        self._outage_until, self._outage_status = time.monotonic() + seconds, status

    def _outage_refusal(self, now: float) -> tuple[int, str, None] | None:
        if now >= self._outage_until:
            return None
        status = self._outage_status
        return status, "service_unavailable" if status == 503 else "internal_error", None

    # ---- rate limits ---------------------------------------------------------------------

    def _call_channel(self, call: ApiCall) -> str | None:
        channel = call.params.get("channel")
        try:
            return self._channel_id(channel)
        except SlackApiError:
            return channel if isinstance(channel, str) else None  # count unknown channels by name

    def _limit_refusal(self, call: ApiCall) -> tuple[int, str, dict] | None:
        """Slack's sliding-window limits: count the calls admitted in the last `period`
        seconds; a call over the limit gets 429 and the whole seconds until the oldest of them
        leaves the window, so a client that waits Retry-After gets through."""
        limit = self.rate_limits.get(call.method)
        if not limit:
            return None
        count, period = limit
        key = (call.method, self._call_channel(call) if call.method in PER_CHANNEL_LIMITS else None)
        window = self._admitted.setdefault(key, deque())
        while window and call.time - window[0] >= period:
            window.popleft()
        if len(window) < count:
            window.append(call.time)
            return None
        self.rate_limited.append(call)
        retry_after = max(1, math.ceil(window[0] + period - call.time))
        return 429, "ratelimited", {"Retry-After": str(retry_after)}

    def max_calls_in_window(self, method: str, period: float, channel: str | None = None) -> int:
        """The most calls of `method` (every attempt, refused ones included; only those for
        `channel` when given) that arrived within any `period` seconds."""
        if channel is not None:
            try:
                channel = self._channel_id(channel)
            except SlackApiError:
                pass
        times = [r.time for r in self.requests if r.method == method
                 and (channel is None or self._call_channel(r) == channel)]
        return max_in_window(times, period)

    # ---- Web API -----------------------------------------------------------------------

    @staticmethod
    async def _params(request: web.Request) -> dict:
        params: dict = dict(request.query)
        if request.method != "POST" or not request.can_read_body:
            return params
        if request.content_type == "application/json":
            raw = await request.read()
            params.update(json.loads(raw) if raw else {})
        elif request.content_type.startswith("multipart/") or request.content_type == "application/x-www-form-urlencoded":
            for name, value in (await request.post()).items():
                params[name] = value if isinstance(value, str) else value.file.read()
        return params

    @staticmethod
    def _token(request: web.Request, params: dict) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):]
        token = params.pop("token", None)
        return token if isinstance(token, str) else None

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        token = self._token(request, params)
        call = ApiCall(method, params, time.monotonic(), token=token)
        self.requests.append(call)
        refusal = self._refusal(call)
        if refusal is not None:
            status, error, headers = refusal
            call.status, call.ok, call.error = status, False, error
            return _json({"ok": False, "error": error}, status, headers)
        handler = self._handlers().get(method)
        try:
            if handler is None:
                raise SlackApiError("unknown_method")
            if method == "apps.connections.open":
                if token != self.app_token:
                    raise SlackApiError("not_allowed_token_type" if token == self.bot_token else "invalid_auth")
            elif token is None:
                raise SlackApiError("not_authed")
            elif token != self.bot_token:
                raise SlackApiError("not_allowed_token_type" if token == self.app_token else "invalid_auth")
            data = {"ok": True, **await handler(params)}
        except SlackApiError as exc:
            data = {"ok": False, "error": exc.error}
        call.status, call.ok, call.error = 200, data["ok"], data.get("error")
        granted = {"x-oauth-scopes": ",".join(self.scopes)} if token == self.bot_token else None
        return _json(data, headers=granted)

    def _refusal(self, call: ApiCall) -> tuple[int, str, dict | None] | None:
        """An outage, then an injected fault, then the rate limiter may answer a call before
        its handler does; faults and outages do not count against the limits."""
        refusal = self._outage_refusal(call.time)
        if refusal is None:
            fault = self._take_fault(call.method)
            refusal = self._fault_refusal(fault) if fault is not None else self._limit_refusal(call)
        return refusal

    def _handlers(self) -> dict[str, Callable]:
        streaming = {"chat.startStream": self._start_stream, "chat.appendStream": self._append_stream,
                     "chat.stopStream": self._stop_stream}
        if not self.streaming:
            streaming = dict.fromkeys(STREAMING_METHODS, self._streaming_off)
        return {
            **streaming,
            "assistant.threads.setStatus": self._set_status,
            "assistant.threads.setSuggestedPrompts": self._set_suggested_prompts,
            "assistant.threads.setTitle": self._set_title,
            "auth.test": self._auth_test,
            "apps.connections.open": self._connections_open,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "reactions.add": self._reactions_add,
            "users.info": self._users_info,
        }

    async def _auth_test(self, _: dict) -> dict:
        return {"url": "https://emulated.slack.com/", "team": "Emulated", "user": "modelbot",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    async def _connections_open(self, _: dict) -> dict:
        ticket = secrets.token_hex(8)
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"}

    def _find(self, params: dict, key: str = "ts") -> SlackMessage:
        cid = self._channel_id(params.get("channel"))
        msg = self.messages.get(str(params.get(key) or ""))
        if msg is None or msg.deleted or msg.channel != cid:
            raise SlackApiError("message_not_found")
        return msg

    def _store(self, channel: str, user: str, text: str, blocks: list | None, thread_ts: str | None,
               origin: str, files: list | None = None) -> SlackMessage:
        msg = SlackMessage(channel=channel, ts=self._new_ts(), user=user, text=text, blocks=blocks,
                           thread_ts=thread_ts or None, origin=origin, files=files or [],
                           bot_id=self.bot_id if user == self.bot_user_id else None)
        msg.history.append((text, blocks, time.monotonic()))
        self.messages[msg.ts] = msg
        return msg

    async def _post_message(self, params: dict) -> dict:
        cid = self._channel_id(params.get("channel"))
        text, blocks = params.get("text") or "", _maybe_json(params.get("blocks"))
        if not text and not blocks and not params.get("attachments"):
            raise SlackApiError("no_text")
        thread_ts = self._thread_root(params.get("thread_ts"))
        msg = self._store(cid, self.bot_user_id, text, blocks, thread_ts, "api")
        self._clear_status(cid, thread_ts)
        return {"channel": cid, "ts": msg.ts, "message": msg.payload()}

    def _thread_root(self, thread_ts: Any) -> str | None:
        if not thread_ts:
            return None
        parent = self.messages.get(str(thread_ts))
        if parent is not None and parent.thread_ts and parent.thread_ts != parent.ts:
            return parent.thread_ts  # a reply's ts names its thread
        return str(thread_ts)

    async def _update(self, params: dict) -> dict:
        msg = self._find(params)
        if msg.user != self.bot_user_id:
            raise SlackApiError("cant_update_message")
        text, blocks = params.get("text"), _maybe_json(params.get("blocks"))
        if text is None and blocks is None:
            raise SlackApiError("no_text")
        if text is not None:
            msg.text = text
        if blocks is not None:
            msg.blocks = blocks or None
        msg.edited = {"user": self.bot_user_id, "ts": self._new_ts()}
        msg.history.append((msg.text, msg.blocks, time.monotonic()))
        return {"channel": msg.channel, "ts": msg.ts, "text": msg.text, "message": msg.payload()}

    async def _delete(self, params: dict) -> dict:
        msg = self._find(params)
        if msg.user != self.bot_user_id:
            raise SlackApiError("cant_delete_message")
        msg.deleted = True
        return {"channel": msg.channel, "ts": msg.ts}

    # ---- chat streaming (Markdown in) ----------------------------------------------------

    async def _streaming_off(self, _: dict) -> dict:
        raise SlackApiError(self.streaming_error)

    @staticmethod
    def _markdown(params: dict) -> str:
        """`markdown_text` and the text of `markdown_text` chunks (what AsyncChatStream sends);
        other chunk types (plans, tasks) carry no message text."""
        text = params.get("markdown_text") or ""
        chunks = _maybe_json(params.get("chunks")) or []
        if not isinstance(chunks, list):
            raise SlackApiError("invalid_arguments")
        text += "".join(c.get("text") or "" for c in chunks
                        if isinstance(c, dict) and c.get("type") == "markdown_text")
        if len(text) > MARKDOWN_LIMIT:
            raise SlackApiError("msg_too_long")
        return text

    def _streaming_message(self, params: dict) -> SlackMessage:
        msg = self._find(params)
        if msg.origin != "stream" or not msg.streaming:
            raise SlackApiError("message_not_in_streaming_state")
        return msg

    def _stream_append(self, msg: SlackMessage, markdown: str) -> None:
        msg.markdown += markdown
        msg.text = msg.markdown
        msg.history.append((msg.text, msg.blocks, time.monotonic()))

    async def _start_stream(self, params: dict) -> dict:
        cid = self._channel_id(params.get("channel"))
        thread_ts = self._thread_root(params.get("thread_ts"))
        if thread_ts is None:
            raise SlackApiError("invalid_arguments")
        if cid not in self.ims:  # in channels Slack must know whom the stream is for
            if not params.get("recipient_user_id"):
                raise SlackApiError("missing_recipient_user_id")
            if not params.get("recipient_team_id"):
                raise SlackApiError("missing_recipient_team_id")
        markdown = self._markdown(params)
        msg = self._store(cid, self.bot_user_id, markdown, None, thread_ts, "stream")
        msg.markdown, msg.streaming = markdown, True
        self._clear_status(cid, thread_ts)
        return {"channel": cid, "ts": msg.ts}

    async def _append_stream(self, params: dict) -> dict:
        msg = self._streaming_message(params)
        self._stream_append(msg, self._markdown(params))
        return {"channel": msg.channel, "ts": msg.ts}

    async def _stop_stream(self, params: dict) -> dict:
        msg = self._streaming_message(params)
        markdown, blocks = self._markdown(params), _maybe_json(params.get("blocks"))
        if blocks:
            msg.blocks = blocks  # rendered under the streamed text
        msg.streaming = False
        self._stream_append(msg, markdown)
        return {"channel": msg.channel, "ts": msg.ts, "message": msg.payload()}

    # ---- assistant threads -------------------------------------------------------------

    def _assistant_thread(self, params: dict) -> tuple[str, str]:
        cid = self._channel_id(params.get("channel_id"))
        thread_ts = self._thread_root(params.get("thread_ts"))  # keyed like the posts that clear it
        if thread_ts is None:
            raise SlackApiError("invalid_arguments")
        return cid, thread_ts

    async def _set_status(self, params: dict) -> dict:
        key = self._assistant_thread(params)
        status = params.get("status")
        if status is None:
            raise SlackApiError("invalid_arguments")
        self.statuses.setdefault(key, []).append((str(status), time.monotonic()))
        return {}

    def _clear_status(self, channel: str, thread_ts: str | None) -> None:
        """Slack clears a thread's status when the app posts in it."""
        if thread_ts and self.status_of(channel, thread_ts):
            self.statuses[(channel, thread_ts)].append(("", time.monotonic()))

    def status_of(self, channel: str, thread_ts: str) -> str:
        """The status now shown in a thread ("" when none)."""
        entries = self.statuses.get((channel, thread_ts))
        return entries[-1][0] if entries else ""

    async def _set_suggested_prompts(self, params: dict) -> dict:
        cid = self._channel_id(params.get("channel_id"))
        prompts = _maybe_json(params.get("prompts"))
        if not isinstance(prompts, list) or not all(
                isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts):
            raise SlackApiError("invalid_arguments")
        self.suggested_prompts.append({"channel_id": cid, "thread_ts": params.get("thread_ts"),
                                       "title": params.get("title"), "prompts": prompts,
                                       "time": time.monotonic()})
        return {}

    async def _set_title(self, params: dict) -> dict:
        key = self._assistant_thread(params)
        if not params.get("title"):
            raise SlackApiError("invalid_arguments")
        self.titles[key] = str(params["title"])
        return {}

    # ---- reading -------------------------------------------------------------------------

    def _visible(self, channel: str) -> list[SlackMessage]:
        return sorted((m for m in self.messages.values() if m.channel == channel and not m.deleted
                       and m.origin != "ephemeral"), key=lambda m: float(m.ts))

    @staticmethod
    def _page(msgs: list[SlackMessage], params: dict, thread_parent: SlackMessage | None = None) -> dict:
        if "oldest" in params:
            msgs = [m for m in msgs if float(m.ts) >= float(params["oldest"])]
        if "latest" in params:
            msgs = [m for m in msgs if float(m.ts) <= float(params["latest"])]
        start = int(params.get("cursor") or 0)
        limit = int(params.get("limit") or 100)
        page = msgs[start:start + limit]
        more = start + limit < len(msgs)
        out = []
        for m in page:
            p = m.payload()
            if thread_parent is not None and m is thread_parent:
                replies = [r for r in msgs if r is not m]
                p["reply_count"] = len(replies)
                if replies:
                    p["latest_reply"] = replies[-1].ts
                p["thread_ts"] = m.ts
            out.append(p)
        return {"messages": out, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    async def _replies(self, params: dict) -> dict:
        cid = self._channel_id(params.get("channel"))
        ts = str(params.get("ts") or "")
        anchor = self.messages.get(ts)
        if anchor is None or anchor.channel != cid or anchor.deleted:
            raise SlackApiError("thread_not_found")
        root = anchor.thread_ts or anchor.ts  # a reply's ts returns its whole thread
        parent = self.messages.get(root)
        thread = [m for m in self._visible(cid) if m.ts == root or m.thread_ts == root]
        return self._page(thread, params, parent)

    async def _history(self, params: dict) -> dict:
        cid = self._channel_id(params.get("channel"))
        top = [m for m in self._visible(cid) if m.thread_ts in (None, m.ts)]
        return self._page(list(reversed(top)), params)  # newest first, like Slack

    async def _reactions_add(self, params: dict) -> dict:
        self._find(params, "timestamp")
        return {}

    async def _users_info(self, params: dict) -> dict:
        user = self.users.get(str(params.get("user")))
        if user is None:
            raise SlackApiError("user_not_found")
        return {"user": {**user, "team_id": self.team_id, "real_name": user["name"]}}

    # ---- files (files_upload_v2) -------------------------------------------------------

    async def _get_upload_url(self, params: dict) -> dict:
        if not params.get("filename") or params.get("length") in (None, ""):
            raise SlackApiError("invalid_arguments")
        f = UploadedFile(self._new_id("F"), params["filename"], int(params["length"]))
        self.files[f.id] = f
        return {"upload_url": f"{self.http_base}/upload/{f.id}", "file_id": f.id}

    async def _upload(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["file_id"])
        if f is None:
            return web.Response(status=404, text="not found")
        if request.content_type.startswith("multipart/"):
            post = await request.post()
            field_ = post.get("file") or next(iter(post.values()), None)
            data = field_.file.read() if hasattr(field_, "file") else str(field_ or "").encode()
        else:
            data = await request.read()
        f.data = data
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")

    async def _download(self, request: web.Request) -> web.Response:
        """url_private(_download): the bytes for the bot token with files:read; like Slack, any
        other request (no token, a wrong one, the scope missing) gets the sign-in page, an HTML
        page with status 200. Each request is recorded in `downloads` as (file id, served)."""
        f = self.files.get(request.match_info["file_id"])
        if f is None or f.data is None:
            return web.Response(status=404)
        allowed = (request.headers.get("Authorization") == f"Bearer {self.bot_token}"
                   and "files:read" in self.scopes)
        self.downloads.append((f.id, allowed))
        if not allowed:
            return web.Response(text=SIGN_IN_PAGE, content_type="text/html", charset="utf-8")
        return web.Response(body=f.data, content_type=f.mimetype)

    def _file_payload(self, f: UploadedFile) -> dict:
        """A file object as Slack's events and files methods carry it."""
        url = f"{self.http_base}/files/{f.id}/{f.filename}"
        return {"id": f.id, "created": int(time.time()), "name": f.filename, "title": f.title or f.filename,
                "mimetype": f.mimetype, "filetype": f.filetype, "user": f.user or self.bot_user_id,
                "size": len(f.data or b""), "mode": "hosted", "is_external": False, "is_public": True,
                "url_private": url, "url_private_download": url + "?download=1",
                "permalink": f"https://emulated.slack.com/files/{f.user or self.bot_user_id}/{f.id}/{f.filename}"}

    def user_file(self, user: str, name: str, data: bytes, mimetype: str | None = None,
                  filetype: str | None = None) -> dict:
        """`user` uploads a file (in Slack's composer) to share with a message: pass what this
        returns in `files=` of post_user_message, app_mention, push_mention or push_dm. The
        mimetype is guessed from the name unless given (Slack says text/plain for most text);
        filetype is Slack's short name ("markdown", "text", "png", …)."""
        guessed = mimetypes.guess_type(name)[0]
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        f = UploadedFile(self._new_id("F"), name, len(data), data, title=name, completed=True,
                         mimetype=mimetype or guessed or "text/plain",
                         filetype=filetype or FILETYPES.get(suffix, suffix or "text"), user=user)
        self.files[f.id] = f
        return self._file_payload(f)

    async def _complete_upload(self, params: dict) -> dict:
        items = _maybe_json(params.get("files"))
        if not isinstance(items, list) or not items:
            raise SlackApiError("invalid_arguments")
        found = []
        for item in items:
            f = self.files.get(str(item.get("id")))
            if f is None or f.data is None:
                raise SlackApiError("file_not_found")
            if len(f.data) != f.length:
                raise SlackApiError("file_upload_size_mismatch")
            f.title, f.completed = item.get("title") or f.filename, True
            found.append(f)
        channel = params.get("channel_id") or (params.get("channels") or "").split(",")[0] or None
        if channel:
            cid = self._channel_id(channel)
            thread_ts = params.get("thread_ts") or None
            for f in found:
                f.channel, f.thread_ts = cid, thread_ts
            self._store(cid, self.bot_user_id, params.get("initial_comment") or "", None, thread_ts, "api",
                        [f.id for f in found])
        return {"files": [self._file_payload(f) for f in found]}

    # ---- Socket Mode -------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ticket = request.query.get("ticket")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)  # a URL is good for one connection, as on Slack
        ws = web.WebSocketResponse(autoping=True)  # answers the client's pings
        await ws.prepare(request)
        self.socket_connections.append(dict(request.query))
        await ws.send_str(json.dumps({
            "type": "hello", "num_connections": len(self._sockets) + 1,
            "debug_info": {"host": "emulated-applink", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id}}))
        async with self._connected:
            self._sockets.append(ws)
            self._connected.notify_all()
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    self._on_socket_frame(json.loads(frame.data))
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws

    def _on_socket_frame(self, frame: dict) -> None:
        eid = frame.get("envelope_id")
        if eid in self.envelopes and eid not in self.acks:
            self.acks[eid] = Ack(eid, time.monotonic(), frame.get("payload"))
        else:
            self.unknown_acks.append(frame)

    async def wait_socket_connected(self, timeout: float = 5.0) -> None:
        """Return once an app holds a Socket Mode connection (and was sent hello)."""
        async with self._connected:
            await asyncio.wait_for(self._connected.wait_for(lambda: any(not w.closed for w in self._sockets)),
                                   timeout)

    async def push_socket_event(self, payload_type: str, payload: dict, *, retry_attempt: int = 0,
                                retry_reason: str = "", accepts_response_payload: bool | None = None,
                                timeout: float = 5.0) -> str:
        """Send an envelope (``events_api``, ``slash_commands``, ``interactive``) over the
        newest Socket Mode connection, waiting up to `timeout` for one; returns its
        envelope_id.  Like Slack, a first delivery carries retry_attempt 0 and
        retry_reason "" (bolt turns those into ``x-slack-retry-num: 0``)."""
        await self.wait_socket_connected(timeout)
        ws = [w for w in self._sockets if not w.closed][-1]
        eid = secrets.token_hex(16)
        if accepts_response_payload is None:
            accepts_response_payload = payload_type != "events_api"
        envelope: dict = {"envelope_id": eid, "payload": payload, "type": payload_type,
                          "accepts_response_payload": accepts_response_payload}
        if payload_type == "events_api":
            envelope |= {"retry_attempt": retry_attempt, "retry_reason": retry_reason}
        self.envelopes[eid] = Envelope(eid, payload_type, payload, time.monotonic(), retry_attempt)
        await ws.send_str(json.dumps(envelope))
        return eid

    async def redeliver(self, envelope_id: str, reason: str = "timeout") -> str:
        """Resend an envelope's payload as Slack's retry would (retry_attempt + 1)."""
        old = self.envelopes[envelope_id]
        return await self.push_socket_event(old.type, old.payload, retry_attempt=old.retry_attempt + 1,
                                            retry_reason=reason)

    async def request_socket_refresh(self) -> None:
        """Send ``disconnect`` (refresh_requested): slack_sdk reconnects via apps.connections.open."""
        for ws in list(self._sockets):
            await ws.send_str(json.dumps({"type": "disconnect", "reason": "refresh_requested",
                                          "debug_info": {"host": "emulated-applink"}}))

    # ---- users' messages, events and commands ------------------------------------------

    def post_user_message(self, user: str, text: str, channel: str | None = None,
                          thread_ts: str | None = None, mention: bool = False,
                          files: list[dict] | None = None) -> SlackMessage:
        """Store a human's message (so conversations.replies sees it). mention prefixes
        ``<@BOT> `` unless present. files: what user_file returned, shared with the message
        (Slack then gives it the subtype file_share)."""
        mark = f"<@{self.bot_user_id}>"
        if mention and mark not in text:
            text = f"{mark} {text}"
        msg = self._store(self._channel_id(channel or self.channel), user, text, None, thread_ts, "user",
                          [f["id"] for f in files or []])
        if files:
            msg.subtype = "file_share"
        return msg

    def app_mention(self, user: str, text: str, channel: str | None = None,
                    thread_ts: str | None = None, files: list[dict] | None = None) -> dict:
        """A human mentions the bot: the message is stored, the app_mention event returned
        (with the `files` shared with it, as Slack's app_mention carries them)."""
        msg = self.post_user_message(user, text, channel, thread_ts, mention=True, files=files)
        event = {"type": "app_mention", "user": user, "text": msg.text, "ts": msg.ts, "channel": msg.channel,
                 "event_ts": msg.ts, "team": self.team_id,
                 "blocks": [{"type": "rich_text", "block_id": "emu", "elements": [
                     {"type": "rich_text_section", "elements": [{"type": "text", "text": msg.text}]}]}]}
        if msg.thread_ts:
            event["thread_ts"] = msg.thread_ts
        return event | self._shared(msg)

    def _shared(self, msg: SlackMessage) -> dict:
        """The `files` of an event for a message that shares files (and `upload`)."""
        if not msg.files:
            return {}
        return {"files": [self._file_payload(self.files[i]) for i in msg.files], "upload": msg.origin == "user"}

    def message_event(self, msg: SlackMessage) -> dict:
        """The ``message`` event (channel_type channel) for a stored message."""
        return {**msg.payload(), "channel": msg.channel, "event_ts": msg.ts, "channel_type": "channel",
                "team": self.team_id, **self._shared(msg)}

    def event_callback(self, event: dict, event_id: str | None = None) -> dict:
        """The Events API body wrapping `event` (same body in Socket Mode and HTTP mode)."""
        return {"token": "emulated-verification-token", "team_id": self.team_id, "api_app_id": self.app_id,
                "event": event, "type": "event_callback", "event_id": event_id or self._new_id("Ev"),
                "event_time": int(time.time()), "event_context": "emu-" + secrets.token_hex(4),
                "is_ext_shared_channel": False,
                "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                    "is_bot": True, "is_enterprise_install": False}]}

    async def push_mention(self, user: str, text: str, channel: str | None = None,
                           thread_ts: str | None = None, files: list[dict] | None = None) -> tuple[str, dict]:
        """app_mention over Socket Mode; returns (envelope_id, event)."""
        event = self.app_mention(user, text, channel, thread_ts, files)
        return await self.push_socket_event("events_api", self.event_callback(event)), event

    def dm_event(self, msg: SlackMessage) -> dict:
        """The ``message`` event (channel_type im, the ``message.im`` subscription) for a
        stored DM message."""
        return {**self.message_event(msg), "channel_type": "im"}

    async def push_dm(self, user: str, text: str, thread_ts: str | None = None,
                      files: list[dict] | None = None) -> tuple[str, dict]:
        """`user` writes to the bot in their DM (in an assistant thread when thread_ts names
        its root), sharing `files` (user_file's) if given: the message is stored and its event
        pushed over Socket Mode; returns (envelope_id, event)."""
        msg = self.post_user_message(user, text, self.im_channel(user), thread_ts, files=files)
        event = self.dm_event(msg)
        return await self.push_socket_event("events_api", self.event_callback(event)), event

    async def push_assistant_thread_started(self, user: str, context_channel: str | None = None
                                            ) -> tuple[str, dict]:
        """`user` opens the app's assistant view (from `context_channel`, if any): Slack creates
        a thread root in their DM, authored by the bot, and sends ``assistant_thread_started``;
        returns (envelope_id, event).  The user's messages there: ``push_dm(user, text,
        thread_ts=event["assistant_thread"]["thread_ts"])``."""
        im = self.im_channel(user)
        root = self._store(im, self.bot_user_id, "New Assistant Thread", None, None, "assistant_thread")
        root.subtype = "assistant_app_thread"
        context = {"channel_id": context_channel and self._channel_id(context_channel),
                   "team_id": self.team_id, "enterprise_id": None}
        event = {"type": "assistant_thread_started",
                 "assistant_thread": {"user_id": user, "context": context, "channel_id": im, "thread_ts": root.ts},
                 "event_ts": self._new_ts()}
        return await self.push_socket_event("events_api", self.event_callback(event)), event

    def response_url_for(self, command_id: str) -> str:
        return f"{self.http_base}/response/{command_id}"

    def slash_command(self, user: str, command: str, text: str = "", channel: str | None = None) -> dict:
        """A slash command payload (all values strings, as Slack sends them); its
        response_url records what the app POSTs in ``emu.response_posts[command_id]``
        (``payload["command_id"]``, an emulator-only key)."""
        cid = self._channel_id(channel or self.channel)
        command_id = self._new_id("Cmd")
        payload = {"token": "emulated-verification-token", "team_id": self.team_id, "team_domain": "emulated",
                   "channel_id": cid, "channel_name": self.channels.get(cid, "directmessage"), "user_id": user,
                   "user_name": self.users.get(user, {}).get("name", "user"), "command": command, "text": text,
                   "api_app_id": self.app_id, "is_enterprise_install": "false",
                   "response_url": self.response_url_for(command_id),
                   "trigger_id": f"{next(self._ids)}.{secrets.token_hex(6)}", "command_id": command_id}
        self.commands[command_id] = payload
        self.response_posts[command_id] = []
        return payload

    async def _response_url(self, request: web.Request) -> web.Response:
        command_id = request.match_info["command_id"]
        if command_id not in self.commands:
            return web.Response(status=404, text="no_such_response_url")
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        self.response_posts[command_id].append({"json": body, "time": time.monotonic()})
        cmd = self.commands[command_id]
        # in_channel responses become channel messages; ephemeral ones only the user sees
        origin = "response_url" if body.get("response_type") == "in_channel" else "ephemeral"
        self._store(cmd["channel_id"], self.bot_user_id, body.get("text") or "", body.get("blocks"),
                    body.get("thread_ts"), origin)
        return web.Response(text="ok", content_type="text/plain")

    # ---- HTTP mode -----------------------------------------------------------------------

    @staticmethod
    def signed_request(body: str | dict, secret: str, timestamp: int | None = None,
                       retry_num: int | None = None, retry_reason: str = "http_timeout",
                       form: bool | None = None) -> tuple[dict, bytes]:
        """Headers and body of a request as Slack signs it.  A dict body is JSON (Events
        API) unless it is a slash command (has "command") or form=True: then it is
        form-encoded.  timestamp defaults to now (pass an old one to get a stale request)."""
        if isinstance(body, dict):
            if form or (form is None and "command" in body):
                text, ctype = urlencode(body), "application/x-www-form-urlencoded"
            else:
                text, ctype = json.dumps(body), "application/json"
        else:
            text = body
            ctype = "application/json" if body.startswith("{") else "application/x-www-form-urlencoded"
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {"Content-Type": ctype, **SlackEmulator.sign(text.encode(), secret, ts)}
        if retry_num is not None:
            headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": retry_reason}
        return headers, text.encode()

    @staticmethod
    def sign(body: bytes, secret: str, timestamp: str) -> dict:
        """Slack's signature headers for exactly these bytes; the timestamp is used verbatim
        (a test may pass a stale or non-numeric one)."""
        base = b"v0:" + timestamp.encode() + b":" + body
        digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": "v0=" + digest}

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def deliver_raw(self, url: str, body: bytes, headers: dict) -> tuple[int, str]:
        """POST exactly `body` with exactly `headers`: nothing is signed, and aiohttp adds only
        Host and Content-Length (no default Content-Type); returns (status, response text)."""
        given = {k.lower() for k in headers}
        skip = [h for h in ("Content-Type", "User-Agent", "Accept", "Accept-Encoding") if h.lower() not in given]
        async with self._client().post(url, data=body, headers=headers, skip_auto_headers=skip) as resp:
            return resp.status, await resp.text()

    async def deliver(self, url: str, body: str | dict, secret: str | None, **sign_kwargs) -> tuple[int, str, float]:
        """POST `body` to an app's request URL, signed with `secret` (None: unsigned);
        returns (status, response text, seconds the app took to answer)."""
        if secret is None:
            headers, data = self.signed_request(body, "unsigned", **sign_kwargs)
            headers = {k: v for k, v in headers.items() if k not in ("X-Slack-Signature", "X-Slack-Request-Timestamp")}
        else:
            headers, data = self.signed_request(body, secret, **sign_kwargs)
        start = time.monotonic()
        async with self._client().post(url, data=data, headers=headers) as resp:
            return resp.status, await resp.text(), time.monotonic() - start

    # ---- assertion helpers -------------------------------------------------------------

    def bot_messages(self, channel: str | None = None, thread_ts: str | None = None,
                     include_ephemeral: bool = False) -> list[SlackMessage]:
        """Messages the bot posted (chat.postMessage, file shares, in_channel responses,
        streams), oldest first; thread_ts selects one thread's replies.  Assistant thread
        roots (Slack's, not the app's) are left out."""
        return sorted((m for m in self.messages.values() if m.user == self.bot_user_id and not m.deleted
                       and m.origin != "assistant_thread" and (include_ephemeral or m.origin != "ephemeral")
                       and (channel is None or m.channel == channel)
                       and (thread_ts is None or m.thread_ts == thread_ts)), key=lambda m: float(m.ts))

    def find_requests(self, method: str) -> list[ApiCall]:
        return [r for r in self.requests if r.method == method]


# -- fixture for the modules that test against the emulator (import it there) ----------------
@pytest.fixture
def no_swallowed_slack_errors(caplog):
    """slack-bolt and slack_sdk log (and swallow) exceptions raised in listeners."""
    yield
    assert_no_swallowed_errors(caplog.records, ("slack_bolt", "slack_sdk"))
