"""A local Discord-compatible server for testing the real discord.py over the wire.

The emulator speaks Discord's REST API (aiohttp web app under /api/v10) and its gateway
(a websocket at /ws/) on 127.0.0.1 with an ephemeral port, so the real discord.py client
runs unmodified against it.  Point discord.py at it with::

    discord.http.Route.BASE = emu.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)

A plain ``discord.Client`` never calls GET /gateway: it connects to DEFAULT_GATEWAY
directly (AutoShardedClient calls GET /gateway/bot, which is served too).

The world is fixed: one guild with two text channels, the bot user, an admin role and the
human users that tests create, plus DM channels (``dm_channel(user)``).  Everything the
client sends is recorded in ``emu.requests``; every message (users', the bot's,
interaction responses) is stored in ``emu.messages`` with its edit history and, per
create/edit, whom Discord would have pinged (``StoredMessage.pings``).

Like Discord, message writes (create and edit) share one rate-limit bucket per channel
(``rate_limit``, 5 per 5 s by default) and all REST requests a global one
(``global_rate_limit``); accepted writes carry truthful ``X-RateLimit-*`` headers and
refused ones get a 429 that discord.py waits out (``emu.rate_limited``,
``channel_writes``, ``max_writes_in_window`` tell what happened).  Faults (429, 403,
5xx, or 0 = dropped connection) are injected with ``fail_next``, and ``outage(seconds)``
answers every REST request with an error for a while.  ``delete_message`` deletes a
message as a moderator would.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http
import itertools
import json
import mimetypes
import math
import re
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from emulator_base import LocalServer, assert_no_swallowed_errors, max_in_window, take_fault

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"

# Permission bits the @everyone role grants (view, send, embed, attach, history,
# reactions, app commands, threads): enough that the bot is never blocked by accident.
EVERYONE_PERMISSIONS = sum(1 << b for b in (6, 10, 11, 14, 15, 16, 31, 35, 38))
ADMIN_PERMISSIONS = 1 << 3
LOADING_FLAG, EPHEMERAL_FLAG = 128, 64
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19  # application flag

# Default bodies for injected errors, shaped like Discord's (message + code).
ERROR_BODIES = {
    400: ("Invalid Form Body", 50035),
    401: ("401: Unauthorized", 0),
    403: ("Missing Permissions", 50013),
    404: ("Unknown Message", 10008),
    500: ("Internal Server Error", 0),
    502: ("502: Bad Gateway", 0),
    503: ("503: Service Unavailable", 0),
    504: ("504: Gateway Timeout", 0),
}
RATE_LIMITED_MESSAGE = "You are being rate limited."

# Message writes: create and edit share one bucket per channel (deletes are not in it).
WRITE_ROUTES = (("POST", re.compile(r"^/channels/(\d+)/messages$")),
                ("PATCH", re.compile(r"^/channels/(\d+)/messages/\d+$")))
# Interaction endpoints (callbacks and their webhooks) are not bound to the global limit.
GLOBAL_EXEMPT = re.compile(r"^/(interactions|webhooks)/")

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
EVERYONE_MENTION = re.compile(r"@(everyone|here)\b")

# fail_next(status=NETWORK_FAILURE): close the connection without any HTTP response.
NETWORK_FAILURE = 0
_DROPPED = object()  # what _injected returns for such a fault


def _json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # discord.py only parses JSON when Content-Type is *exactly* application/json, so no
    # charset suffix (aiohttp's json_response would add one).
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=hdrs)


def _error(status: int, message: str, code: int) -> web.Response:
    return _json_response({"message": message, "code": code}, status)


def _error_for(status: int, body: dict | None = None) -> web.Response:
    """An injected error, with a Discord-shaped body unless one is given."""
    try:
        default = (http.HTTPStatus(status).phrase, 0)
    except ValueError:
        default = ("Error", 0)
    message, code = ERROR_BODIES.get(status, default)
    return _json_response(body or {"message": message, "code": code}, status)


def write_channel(method: str, path: str) -> str | None:
    """The channel a message write (create or edit) goes to; None for any other request."""
    for write_method, pattern in WRITE_ROUTES:
        match = pattern.match(path)
        if match and method == write_method:
            return match.group(1)
    return None


def _bucket_hash(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:32]


# Like Discord, one hash for the message-write route in every channel (the channel id is
# the bucket's major parameter): discord.py keys hashes by route, so a hash per channel
# would make it re-learn the bucket whenever the bot switched channels.
WRITE_BUCKET_HASH = _bucket_hash("channel message writes")


def _base_type(content_type: str | None) -> str:
    return (content_type or "application/octet-stream").split(";")[0].strip()


def _iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


@dataclass
class Request:
    """One REST request as it arrived (faulted ones included)."""

    method: str
    path: str  # relative to the API base, e.g. /channels/1/messages
    query: dict
    json: Any  # JSON body, or the parsed payload_json of a multipart body
    form: dict  # non-file multipart fields
    files: list  # [(filename, bytes)] from multipart bodies
    time: float  # time.monotonic() at arrival
    status: int | None = None  # status returned (0: connection dropped), filled in after handling


# Where the middleware leaves the parsed Request for the handler.
REC_KEY = web.RequestKey("rec", Request) if hasattr(web, "RequestKey") else "rec"


@dataclass
class StoredMessage:
    """A message as the emulator knows it; ``payload()`` is what goes over the wire."""

    id: str
    channel_id: str
    author: dict
    content: str
    origin: str  # "user", "rest", "interaction" or "webhook" (interaction follow-up)
    guild_id: str | None  # None in DMs
    history: list = field(default_factory=list)  # [{"content", "time"}], creation first
    attachments: list = field(default_factory=list)  # [{"id", "filename", "data"}]
    message_reference: dict | None = None
    mentions: list = field(default_factory=list)  # user objects pinged by the last create/edit
    embeds: list = field(default_factory=list)
    flags: int = 0
    interaction_id: str | None = None
    member: dict | None = None
    deleted: bool = False
    timestamp: str = field(default_factory=_iso_now)
    edited_timestamp: str | None = None
    # Per create/edit, in order: {"users": [ids], "roles": [ids], "everyone": bool} that
    # Discord would ping, and the raw allowed_mentions sent (None when absent).
    pings: list = field(default_factory=list)
    allowed_mentions_history: list = field(default_factory=list)


@dataclass
class InteractionRecord:
    """What happened to one pushed interaction: its callbacks and original message."""

    id: str
    token: str
    name: str
    kind: int
    user: dict
    channel_id: str
    created: float
    callbacks: list = field(default_factory=list)  # [{"type", "data", "time"}]
    original_id: str | None = None
    expired: bool = False

    @property
    def choices(self) -> list | None:
        """Autocomplete choices from the last type 8 callback."""
        found = [c for c in self.callbacks if c["type"] == 8]
        return found[-1]["data"].get("choices") if found else None


@dataclass
class _Fault:
    method: str
    path_re: re.Pattern
    status: int
    retry_after: float | None
    times: int
    body: dict | None


class _Bucket:
    """Discord's rate-limit window: opened by the first request after the previous window
    ended, it lasts `period` seconds and admits `limit` requests."""

    def __init__(self, limit: int, period: float):
        self.limit, self.period = limit, period
        self.end, self.count = 0.0, 0

    def admit(self, now: float) -> bool:
        if now >= self.end:
            self.end, self.count = now + self.period, 0
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def reset_after(self, now: float) -> float:
        # Rounded up to the millisecond: a client that waits this long is never early.
        return math.ceil(max(0.0, self.end - now) * 1000) / 1000

    def headers(self, now: float) -> dict:
        reset_after = self.reset_after(now)
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.limit - self.count),
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{reset_after:.3f}"}


def _rate_limited(retry_after: float, is_global: bool, headers: dict | None = None) -> web.Response:
    """A 429 discord.py waits out: it needs `Via` (else it assumes a Cloudflare ban)."""
    hdrs = {**(headers or {}), "Retry-After": str(max(1, math.ceil(retry_after))), "Via": "1.1 google",
            "X-RateLimit-Scope": "global" if is_global else "user"}
    if is_global:
        hdrs["X-RateLimit-Global"] = "true"
    body = {"message": RATE_LIMITED_MESSAGE, "retry_after": retry_after, "global": is_global}
    return _json_response(body, 429, hdrs)


class _GatewaySession:
    """One websocket connection: sequence numbers and optional zlib-stream compression."""

    def __init__(self, ws: web.WebSocketResponse, compress: bool):
        self.ws = ws
        self.seq = 0
        self.identified = False
        self.session_id = secrets.token_hex(16)
        self._zlib = zlib.compressobj() if compress else None
        self._lock = asyncio.Lock()  # REST handlers and the gateway loop send concurrently

    async def send(self, op: int, d: Any, t: str | None = None) -> None:
        async with self._lock:  # keeps frames in sequence-number order
            frame: dict = {"op": op, "d": d, "s": None, "t": t}
            if op == 0:
                self.seq += 1
                frame["s"] = self.seq
            raw = json.dumps(frame).encode()
            if self._zlib is None:
                await self.ws.send_str(raw.decode())
            else:  # zlib-stream: one shared context, each frame ends with a sync flush
                await self.ws.send_bytes(self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH))


class DiscordEmulator(LocalServer):
    def __init__(self, *, heartbeat_interval_ms: int = 1000, ack_deadline: float | None = 3.0,
                 gateway_compression: bool = False, rate_limit: tuple[int, float] | None = (5, 5.0),
                 global_rate_limit: tuple[int, float] | None = (50, 1.0), token: str | None = None,
                 message_content_intent: bool = True):
        """rate_limit: (writes, seconds) per channel for message creates and edits together;
        global_rate_limit: (requests, seconds) over all REST requests. None turns one off.
        token: the bot token REST calls must carry (`Authorization: Bot …`; else 401, as
        Discord answers a reset token); None accepts any. message_content_intent: whether the
        portal's Message Content switch is on (the application's `flags`)."""
        super().__init__()
        self.token = token
        self.message_content_intent = message_content_intent
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.ack_deadline = ack_deadline  # interactions not answered in time get 404 10062
        self.gateway_compression = gateway_compression  # honour ?compress=zlib-stream
        start = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._ids = itertools.count(start)
        self.requests: list[Request] = []
        self.messages: dict[str, StoredMessage] = {}
        self.interactions: dict[str, InteractionRecord] = {}
        self.commands: dict[str | None, list[dict]] = {}  # None = global, else guild id
        self.identify_payloads: list[dict] = []
        self.resume_payloads: list[dict] = []
        self.gateway_connections: list[dict] = []  # query of each websocket connect
        self.downloads: list[str] = []  # attachment ids fetched from the CDN route, in order
        self._faults: list[_Fault] = []
        self.rate_limit = rate_limit
        self._write_buckets: dict[str, _Bucket] = {}  # channel id -> its message-write window
        self._global_bucket = _Bucket(*global_rate_limit) if global_rate_limit else None
        self.rate_limited: list[Request] = []  # refused by a rate limit (not injected faults)
        self._outage: tuple[float, int] = (0.0, 503)  # (monotonic end, status)
        self._sessions: list[_GatewaySession] = []
        self._ready = asyncio.Event()
        self._build_world()

    # ---- world -------------------------------------------------------------------------

    def new_id(self) -> str:
        return str(next(self._ids))

    def _build_world(self) -> None:
        self.guild_id, self.application_id = self.new_id(), self.new_id()
        self.guild_name = "Emulated Guild"
        self.bot_user_id = self.new_id()
        self.bot_user = self._user_dict(self.bot_user_id, "modelbot", True)
        self.admin_role_id = self.new_id()
        self.roles = [
            {"id": self.guild_id, "name": "@everyone", "permissions": str(EVERYONE_PERMISSIONS), "position": 0},
            {"id": self.admin_role_id, "name": "admin", "permissions": str(ADMIN_PERMISSIONS), "position": 1},
        ]
        self.members: dict[str, dict] = {}
        self.users: dict[str, dict] = {self.bot_user_id: self.bot_user}
        self._add_member(self.bot_user, [])
        self.owner = self.user("owner", roles=[self.admin_role_id])
        self.channels: dict[str, dict] = {}
        self.channel_id = self._add_channel("general")["id"]
        self.other_channel_id = self._add_channel("random")["id"]

    @staticmethod
    def _user_dict(uid: str, name: str, bot: bool) -> dict:
        return {"id": uid, "username": name, "global_name": name, "discriminator": "0",
                "avatar": None, "bot": bot}

    def _add_member(self, user: dict, roles: list) -> None:
        self.members[user["id"]] = {"user": user, "roles": [str(r) for r in roles],
                                    "joined_at": _iso_now(), "deaf": False, "mute": False, "flags": 0}

    def _add_channel(self, name: str) -> dict:
        ch = {"id": self.new_id(), "type": 0, "name": name, "guild_id": self.guild_id,
              "position": len(self.channels), "permission_overwrites": [], "topic": None,
              "nsfw": False, "parent_id": None, "last_message_id": None}
        self.channels[ch["id"]] = ch
        return ch

    def user(self, name: str, bot: bool = False, roles: tuple = ()) -> dict:
        """Create a guild member; returns its user object (pass roles=[emu.admin_role_id])."""
        user = self._user_dict(self.new_id(), name, bot)
        self.users[user["id"]] = user
        self._add_member(user, list(roles))
        return user

    def _member_payload(self, user_id: str, with_user: bool = False) -> dict:
        member = dict(self.members.get(user_id) or {"roles": [], "joined_at": _iso_now(), "flags": 0})
        perms = EVERYONE_PERMISSIONS | (ADMIN_PERMISSIONS if self.admin_role_id in member["roles"] else 0)
        member["permissions"] = str(perms)
        if not with_user:
            member.pop("user", None)
        return member

    def _thread_payload(self, name: str, parent_id: str, owner_id: str, tid: str | None = None) -> dict:
        return {"id": tid or self.new_id(), "type": 11, "name": name, "guild_id": self.guild_id,
                "parent_id": parent_id, "owner_id": owner_id, "message_count": 0, "member_count": 1,
                "rate_limit_per_user": 0, "last_message_id": None,
                "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "locked": False,
                                    "archive_timestamp": _iso_now(), "create_timestamp": _iso_now()}}

    async def create_thread(self, name: str, parent_id: str | None = None, owner_id: str | None = None,
                            thread_id: str | None = None) -> dict:
        """Create a public thread (type 11) and announce it with THREAD_CREATE."""
        thread = self._thread_payload(name, parent_id or self.channel_id, owner_id or self.owner["id"], thread_id)
        self.channels[thread["id"]] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    def dm_channel(self, user: dict) -> str:
        """The id of the DM channel between the bot and `user`, created on first use: type 1,
        `recipients: [user]`, no guild_id (Discord sends no CHANNEL_CREATE for it to bots)."""
        for ch in self.channels.values():
            if ch["type"] == 1 and ch["recipients"][0]["id"] == user["id"]:
                return ch["id"]
        self.users.setdefault(user["id"], user)
        ch = {"id": self.new_id(), "type": 1, "recipients": [user], "last_message_id": None, "flags": 0}
        self.channels[ch["id"]] = ch
        return ch["id"]

    def _guild_of(self, channel_id: str) -> str | None:
        """The channel's guild id; None for a DM. Unknown channels count as the guild's."""
        ch = self.channels.get(channel_id)
        return ch.get("guild_id") if ch else self.guild_id

    def _guild_payload(self) -> dict:
        text = [c for c in self.channels.values() if c.get("guild_id") and c["type"] != 11]
        threads = [c for c in self.channels.values() if c["type"] == 11]
        return {
            "id": self.guild_id, "name": self.guild_name, "unavailable": False, "owner_id": self.owner["id"],
            "member_count": len(self.members), "large": False, "joined_at": _iso_now(),
            "roles": self.roles, "channels": text, "threads": threads,
            "members": [self._member_payload(uid, with_user=True) for uid in self.members],
            "emojis": [], "stickers": [], "features": [], "voice_states": [], "presences": [],
            "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
            "preferred_locale": "en-US",
        }

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self.http_base + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_inject], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/ws/", self._gateway)
        app.router.add_get("/attachments/{aid}/{filename}", self._get_attachment)
        self._add_rest_routes(app.router)
        return app

    async def _close_connections(self) -> None:
        for session in list(self._sessions):
            await session.ws.close(code=1000)

    # ---- fault injection and recording -------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, retry_after: float | None = None,
                  times: int = 1, body: dict | None = None) -> None:
        """Answer the next `times` matching requests (method or "*", regex searched in the
        API-relative path) with `status`. 429s carry what discord.py needs to retry. Status 0
        drops the connection without a response (the client sees a ServerDisconnectedError;
        aiohttp itself retries an idempotent GET/PUT/DELETE once on a reused connection)."""
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, retry_after, times, body))

    def outage(self, seconds: float, status: int = 503) -> None:
        """For `seconds` from now answer every REST request with `status` (0: drop the
        connection); the gateway and attachment downloads keep working."""
        self._outage = (time.monotonic() + seconds, status)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        return take_fault(self._faults, lambda f: f.method in ("*", method) and f.path_re.search(path))

    def _injected(self, rec: Request) -> web.Response | object | None:
        """An injected fault's or outage's answer (_DROPPED: no answer at all), else None."""
        fault = self._take_fault(rec.method, rec.path)
        if fault is not None:
            return _DROPPED if fault.status == NETWORK_FAILURE else self._fault_response(fault, rec)
        until, status = self._outage
        if rec.time < until:
            return _DROPPED if status == NETWORK_FAILURE else _error_for(status)
        return None

    def _fault_response(self, fault: _Fault, rec: Request) -> web.Response:
        if fault.status != 429:
            return _error_for(fault.status, fault.body)
        retry = fault.retry_after if fault.retry_after is not None else 0.5
        # The route's real bucket hash: a different one would make discord.py split the bucket.
        is_write = write_channel(rec.method, rec.path) is not None
        bucket = WRITE_BUCKET_HASH if is_write else _bucket_hash(f"{rec.method} {re.sub(r'[0-9]+', '', rec.path)}")
        headers = {"X-RateLimit-Limit": str(self.rate_limit[0] if self.rate_limit else 5),
                   "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f"{time.time() + retry:.3f}",
                   "X-RateLimit-Reset-After": f"{retry:.3f}", "X-RateLimit-Bucket": bucket}
        response = _rate_limited(retry, False, headers)
        if fault.body:
            response.body = json.dumps(fault.body).encode()
        return response

    def _limit(self, rec: Request) -> tuple[web.Response | None, dict]:
        """(a 429 if a rate limit refuses the request, else None; the headers for an
        accepted message write). The global window is checked first, as on Discord."""
        if self._global_bucket and not GLOBAL_EXEMPT.match(rec.path) and not self._global_bucket.admit(rec.time):
            return _rate_limited(self._global_bucket.reset_after(rec.time), True), {}
        cid = write_channel(rec.method, rec.path)
        if cid is None or self.rate_limit is None:
            return None, {}
        bucket = self._write_buckets.setdefault(cid, _Bucket(*self.rate_limit))
        admitted, now = bucket.admit(rec.time), time.monotonic()
        headers = {**bucket.headers(now), "X-RateLimit-Bucket": WRITE_BUCKET_HASH}
        if admitted:
            return None, headers
        return _rate_limited(bucket.reset_after(now), False, headers), {}

    def _unauthorized(self, request: web.Request, rec: Request) -> web.Response | None:
        """Discord's 401 for a bot token that is wrong or was reset (interaction callbacks and
        webhooks authenticate with their own token in the path instead)."""
        if self.token is None or GLOBAL_EXEMPT.match(rec.path):
            return None
        if request.headers.get("Authorization") == f"Bot {self.token}":
            return None
        return _error(401, "401: Unauthorized", 0)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the socket without answering. aiohttp then fails to write the returned
        response and ignores that quietly (a raised exception would log a traceback)."""
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)

    @staticmethod
    async def _parse_body(request: web.Request) -> tuple[Any, dict, list]:
        if request.content_type.startswith("multipart/"):
            post = await request.post()
            form, files = {}, []
            for name, value in post.items():
                if isinstance(value, str):
                    form[name] = value
                else:
                    files.append((value.filename, value.file.read()))
            return json.loads(form.get("payload_json") or "null"), form, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), {}, []

    @web.middleware
    async def _record_and_inject(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        path = request.path[len(API_PREFIX):]
        body, form, files = await self._parse_body(request)
        rec = Request(request.method, path, dict(request.query), body, form, files, time.monotonic())
        self.requests.append(rec)
        request[REC_KEY] = rec
        response = self._injected(rec)  # before the limiter: faults do not count against it
        if response is None:
            response = self._unauthorized(request, rec)
        if response is _DROPPED:
            rec.status = NETWORK_FAILURE
            return self._drop(request)
        if response is None:
            response, headers = self._limit(rec)
            if response is not None:
                self.rate_limited.append(rec)
            else:
                response = await self._handle(request, handler)
                response.headers.update(headers)
        rec.status = response.status
        return response

    @staticmethod
    async def _handle(request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # unknown route or method: a JSON error like Discord's
            return _error(exc.status, f"{exc.status}: {exc.reason}", 0)

    # ---- REST routes -------------------------------------------------------------------

    def _add_rest_routes(self, r: web.UrlDispatcher) -> None:
        p = API_PREFIX
        r.add_get(p + "/users/@me", lambda _: _json_response(self.bot_user))
        r.add_get(p + "/oauth2/applications/@me", self._app_info)
        r.add_get(p + "/applications/@me", self._app_info)
        r.add_get(p + "/gateway", lambda _: _json_response({"url": self.gateway_url}))
        r.add_get(p + "/gateway/bot", self._gateway_bot)
        r.add_get(p + "/channels/{cid}", self._get_channel)
        r.add_get(p + "/channels/{cid}/messages", self._history)
        r.add_post(p + "/channels/{cid}/messages", self._post_message)
        r.add_get(p + "/channels/{cid}/messages/{mid}", self._get_message)
        r.add_patch(p + "/channels/{cid}/messages/{mid}", self._patch_message)
        r.add_delete(p + "/channels/{cid}/messages/{mid}", self._delete_message)
        r.add_put(p + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", lambda _: web.Response(status=204))
        r.add_post(p + "/channels/{cid}/typing", lambda _: web.Response(status=204))
        r.add_post(p + "/channels/{cid}/messages/{mid}/threads", self._post_thread)
        r.add_post(p + "/channels/{cid}/threads", self._post_thread)
        for scope in ("/applications/{app}/commands", "/applications/{app}/guilds/{gid}/commands"):
            r.add_put(p + scope, self._put_commands)
            r.add_get(p + scope, self._get_commands)
        r.add_post(p + "/interactions/{iid}/{token}/callback", self._interaction_callback)
        r.add_post(p + "/webhooks/{app}/{token}", self._webhook_post)
        r.add_get(p + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)
        r.add_patch(p + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)
        r.add_delete(p + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)

    async def _app_info(self, _: web.Request) -> web.Response:
        return _json_response({"id": self.application_id, "name": "modelbot", "description": "", "icon": None,
                               "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
                               "owner": self.owner, "flags": self.application_flags, "bot": self.bot_user})

    @property
    def application_flags(self) -> int:
        """An unverified app (under 100 servers) with the portal's Message Content switch on
        has GATEWAY_MESSAGE_CONTENT_LIMITED; a verified, approved one GATEWAY_MESSAGE_CONTENT (1 << 18)."""
        return GATEWAY_MESSAGE_CONTENT_LIMITED if self.message_content_intent else 0

    async def _gateway_bot(self, _: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _get_channel(self, request: web.Request) -> web.Response:
        ch = self.channels.get(request.match_info["cid"])
        return _json_response(ch) if ch else _error(404, "Unknown Channel", 10003)

    def _find_message(self, request: web.Request) -> StoredMessage | None:
        msg = self.messages.get(request.match_info["mid"])
        if msg is None or msg.deleted or msg.channel_id != request.match_info["cid"]:
            return None
        return msg

    async def _history(self, request: web.Request) -> web.Response:
        cid, q = request.match_info["cid"], request.query
        msgs = [m for m in self.messages.values() if m.channel_id == cid and not m.deleted
                and not m.flags & EPHEMERAL_FLAG]
        if "before" in q:
            msgs = [m for m in msgs if int(m.id) < int(q["before"])]
        if "after" in q:
            msgs = [m for m in msgs if int(m.id) > int(q["after"])]
        msgs.sort(key=lambda m: int(m.id), reverse=True)  # newest first, like Discord
        return _json_response([self.payload(m) for m in msgs[: int(q.get("limit", 50))]])

    async def _post_message(self, request: web.Request) -> web.Response:
        cid, rec = request.match_info["cid"], request[REC_KEY]
        if cid not in self.channels:
            return _error(404, "Unknown Channel", 10003)
        msg = await self._create_message(cid, self.bot_user, rec.json or {}, rec.files, origin="rest")
        return _json_response(self.payload(msg))

    async def _get_message(self, request: web.Request) -> web.Response:
        msg = self._find_message(request)
        return _json_response(self.payload(msg)) if msg else _error(404, "Unknown Message", 10008)

    async def _patch_message(self, request: web.Request) -> web.Response:
        msg = self._find_message(request)
        if msg is None:
            return _error(404, "Unknown Message", 10008)
        if msg.author["id"] != self.bot_user_id:
            return _error(403, "Cannot edit a message authored by another user", 50005)
        rec = request[REC_KEY]
        await self._edit_message(msg, rec.json or {}, rec.files)
        return _json_response(self.payload(msg))

    async def _delete_message(self, request: web.Request) -> web.Response:
        msg = self._find_message(request)
        if msg is None:
            return _error(404, "Unknown Message", 10008)
        await self._mark_deleted(msg)
        return web.Response(status=204)

    async def _post_thread(self, request: web.Request) -> web.Response:
        body = request[REC_KEY].json or {}
        # A thread started from a message takes the message's id, as on Discord.
        thread = await self.create_thread(body.get("name", "thread"), request.match_info["cid"],
                                          self.bot_user_id, request.match_info.get("mid"))
        return _json_response(thread, 201)

    async def _put_commands(self, request: web.Request) -> web.Response:
        gid = request.match_info.get("gid")
        old = {c["name"]: c["id"] for c in self.commands.get(gid, [])}
        stored = []
        for cmd in request[REC_KEY].json or []:
            full = {"type": 1, "description": "", "options": [], **cmd, "id": old.get(cmd["name"]) or self.new_id(),
                    "application_id": self.application_id, "version": self.new_id()}
            if gid:
                full["guild_id"] = gid
            stored.append(full)
        self.commands[gid] = stored
        return _json_response(stored)

    async def _get_commands(self, request: web.Request) -> web.Response:
        return _json_response(self.commands.get(request.match_info.get("gid"), []))

    async def _get_attachment(self, request: web.Request) -> web.Response:
        """Discord's CDN: the attachment's bytes (each download is recorded in `downloads`)."""
        self.downloads.append(request.match_info["aid"])
        for msg in self.messages.values():
            for att in msg.attachments:
                if att["id"] == request.match_info["aid"]:
                    return web.Response(body=att["data"], content_type=_base_type(att.get("content_type")))
        return web.Response(status=404)

    # ---- messages ----------------------------------------------------------------------

    def _attachment(self, filename: str, data: bytes, content_type: str | None = None) -> dict:
        """Discord guesses an attachment's content_type from its name (text ones with a charset)."""
        if content_type is None:
            content_type = mimetypes.guess_type(filename)[0]
            if content_type and content_type.startswith("text/"):
                content_type += "; charset=utf-8"
        return {"id": self.new_id(), "filename": filename, "data": data, "content_type": content_type}

    def _attachment_payload(self, a: dict) -> dict:
        url = f"{self.http_base}/attachments/{a['id']}/{a['filename']}"
        data = {"id": a["id"], "filename": a["filename"], "size": len(a["data"]), "url": url, "proxy_url": url}
        if a.get("content_type"):  # absent where Discord could not tell
            data["content_type"] = a["content_type"]
        if (a.get("content_type") or "").startswith("image/"):
            data |= {"width": 1, "height": 1}
        return data

    def payload(self, msg: StoredMessage, with_reference: bool = True) -> dict:
        """The message as Discord sends it (REST responses and gateway dispatches)."""
        atts = [self._attachment_payload(a) for a in msg.attachments]
        pinged = msg.pings[-1] if msg.pings else {"roles": [], "everyone": False}
        data = {"id": msg.id, "channel_id": msg.channel_id, "author": msg.author,
                "content": msg.content, "timestamp": msg.timestamp, "edited_timestamp": msg.edited_timestamp,
                "tts": False, "mention_everyone": pinged["everyone"], "mentions": msg.mentions,
                "mention_roles": pinged["roles"], "attachments": atts, "embeds": msg.embeds, "pinned": False,
                "components": [], "type": 19 if msg.message_reference else 0, "flags": msg.flags}
        if msg.guild_id:  # DM messages carry neither guild_id nor member
            data["guild_id"] = msg.guild_id
        if msg.member:
            data["member"] = msg.member
        if msg.origin in ("interaction", "webhook"):
            data["webhook_id"] = self.application_id
            data["application_id"] = self.application_id
        if msg.message_reference:
            data["message_reference"] = msg.message_reference
            ref = self.messages.get(msg.message_reference["message_id"])
            if with_reference:  # one level deep, like Discord
                data["referenced_message"] = self.payload(ref, False) if ref and not ref.deleted else None
        return data

    def _pings(self, msg: StoredMessage, allowed: dict | None, replied_to: StoredMessage | None) -> dict:
        """Whom Discord pings for this content: with allowed_mentions absent every user, role
        and @everyone/@here mention; with it present only the kinds in `parse` plus the
        mentioned ids in its `users`/`roles` lists. A reply also pings the replied-to author
        when `replied_user` (true when allowed_mentions is absent, else default false)."""
        in_guild = msg.guild_id is not None
        role_ids = {r["id"] for r in self.roles} if in_guild else set()
        users = [u for u in dict.fromkeys(USER_MENTION.findall(msg.content)) if u in self.users]
        roles = [r for r in dict.fromkeys(ROLE_MENTION.findall(msg.content)) if r in role_ids]
        everyone = in_guild and bool(EVERYONE_MENTION.search(msg.content))
        if allowed is not None:
            parse = allowed.get("parse") or []
            if "users" not in parse:
                users = [u for u in users if u in {str(i) for i in allowed.get("users") or []}]
            if "roles" not in parse:
                roles = [r for r in roles if r in {str(i) for i in allowed.get("roles") or []}]
            everyone = everyone and "everyone" in parse
        ping_reply = allowed is None or allowed.get("replied_user", False)
        # Replying to one's own message pings no one.
        if replied_to is not None and ping_reply and replied_to.author["id"] not in (msg.author["id"], *users):
            users.append(replied_to.author["id"])
        return {"users": users, "roles": roles, "everyone": everyone}

    def _record_pings(self, msg: StoredMessage, allowed: dict | None, replied_to: StoredMessage | None = None) -> None:
        pinged = self._pings(msg, allowed, replied_to)
        msg.pings.append(pinged)
        msg.allowed_mentions_history.append(allowed)
        msg.mentions = [dict(self.users[uid]) for uid in pinged["users"]]
        if msg.guild_id:  # in a guild each mentioned user comes with its member
            for user in msg.mentions:
                user["member"] = self._member_payload(user["id"])

    async def _create_message(self, channel_id: str, author: dict, body: dict, files: list, origin: str,
                              interaction_id: str | None = None) -> StoredMessage:
        guild_id = self._guild_of(channel_id)
        self.users.setdefault(author["id"], author)  # so that replies to it can mention it
        ref = body.get("message_reference")
        if ref:
            ref = {"message_id": str(ref["message_id"]), "channel_id": str(ref.get("channel_id") or channel_id)}
            if guild_id:
                ref["guild_id"] = guild_id
        content = body.get("content") or ""
        msg = StoredMessage(
            id=self.new_id(), channel_id=channel_id, author=author, content=content, origin=origin,
            guild_id=guild_id, message_reference=ref, embeds=body.get("embeds") or [],
            flags=int(body.get("flags") or 0), interaction_id=interaction_id,
            attachments=[self._attachment(*f) for f in files],
            member=self._member_payload(author["id"]) if guild_id and author["id"] in self.members else None)
        self._record_pings(msg, body.get("allowed_mentions"), self.messages.get(ref["message_id"]) if ref else None)
        msg.history.append({"content": content, "time": time.monotonic()})
        self.messages[msg.id] = msg
        if not msg.flags & EPHEMERAL_FLAG:  # the bot sees its own messages too, as on Discord
            await self.dispatch("MESSAGE_CREATE", self.payload(msg))
        return msg

    async def _edit_message(self, msg: StoredMessage, body: dict, files: list) -> None:
        if "content" in body:
            msg.content = body["content"] or ""
        if "embeds" in body:
            msg.embeds = body["embeds"] or []
        if "attachments" in body:  # the listed existing attachments are kept
            keep = {str(a.get("id")) for a in body["attachments"] or []}
            msg.attachments = [a for a in msg.attachments if a["id"] in keep]
        msg.attachments += [self._attachment(n, d) for n, d in files]
        msg.flags &= ~LOADING_FLAG
        msg.edited_timestamp = _iso_now()
        self._record_pings(msg, body.get("allowed_mentions"))
        msg.history.append({"content": msg.content, "time": time.monotonic()})
        if not msg.flags & EPHEMERAL_FLAG:
            await self.dispatch("MESSAGE_UPDATE", self.payload(msg))

    async def _mark_deleted(self, msg: StoredMessage) -> None:
        msg.deleted = True
        if not msg.flags & EPHEMERAL_FLAG:
            data = {"id": msg.id, "channel_id": msg.channel_id}
            if msg.guild_id:
                data["guild_id"] = msg.guild_id
            await self.dispatch("MESSAGE_DELETE", data)

    async def delete_message(self, message_id: str) -> None:
        """Delete a message as a moderator would: MESSAGE_DELETE is dispatched, and later
        edits of it get 404 Unknown Message (10008)."""
        await self._mark_deleted(self.messages[str(message_id)])

    # ---- interactions ------------------------------------------------------------------

    def _interaction(self, token: str) -> InteractionRecord | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    def expire_interaction(self, interaction_id: str) -> None:
        """Make the interaction's token invalid, as Discord does after 15 minutes."""
        self.interactions[interaction_id].expired = True

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        inter = self.interactions.get(request.match_info["iid"])
        if inter is None or inter.token != request.match_info["token"] or inter.expired:
            return _error(404, "Unknown interaction", 10062)
        if inter.callbacks:
            return _error(400, "Interaction has already been acknowledged.", 40060)
        if self.ack_deadline is not None and time.monotonic() - inter.created > self.ack_deadline:
            return _error(404, "Unknown interaction", 10062)
        rec = request[REC_KEY]
        body = rec.json or {}
        ctype, data = body.get("type"), body.get("data") or {}
        inter.callbacks.append({"type": ctype, "data": data, "time": rec.time})
        msg = None
        if ctype == 4:
            msg = await self._create_message(inter.channel_id, self.bot_user, data, rec.files,
                                             "interaction", inter.id)
        elif ctype == 5:  # deferred: a "thinking" placeholder that @original edits later
            flags = LOADING_FLAG | (int(data.get("flags") or 0) & EPHEMERAL_FLAG)
            msg = await self._create_message(inter.channel_id, self.bot_user, {"flags": flags}, [],
                                             "interaction", inter.id)
        out: dict = {"interaction": {"id": inter.id, "type": inter.kind,
                                     "response_message_loading": ctype == 5,
                                     "response_message_ephemeral": bool(msg and msg.flags & EPHEMERAL_FLAG)}}
        if msg is not None:
            inter.original_id = msg.id
            out["interaction"]["response_message_id"] = msg.id
            out["resource"] = {"type": ctype, "message": self.payload(msg)}
        return _json_response(out)

    def _webhook_interaction(self, request: web.Request) -> InteractionRecord | None:
        inter = self._interaction(request.match_info["token"])
        return None if inter is None or inter.expired else inter

    async def _webhook_post(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        if inter is None:
            return _error(401, "Invalid Webhook Token", 50027)
        rec = request[REC_KEY]
        msg = await self._create_message(inter.channel_id, self.bot_user, rec.json or {}, rec.files,
                                         "webhook", inter.id)
        return _json_response(self.payload(msg))

    async def _webhook_message(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        if inter is None:
            return _error(401, "Invalid Webhook Token", 50027)
        mid = request.match_info["mid"]
        msg = self.messages.get(inter.original_id if mid == "@original" else mid)
        if msg is None or msg.deleted or msg.interaction_id != inter.id:
            return _error(404, "Unknown Message", 10008)
        if request.method == "DELETE":
            await self._mark_deleted(msg)
            return web.Response(status=204)
        if request.method == "PATCH":
            await self._edit_message(msg, request[REC_KEY].json or {}, request[REC_KEY].files)
        return _json_response(self.payload(msg))

    # ---- gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.gateway_connections.append(dict(request.query))
        compress = self.gateway_compression and request.query.get("compress") == "zlib-stream"
        session = _GatewaySession(ws, compress)
        self._sessions.append(session)
        try:
            await session.send(10, {"heartbeat_interval": self.heartbeat_interval_ms})
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    await self._on_gateway_frame(session, json.loads(frame.data))
        finally:
            self._sessions.remove(session)
        return ws

    async def _on_gateway_frame(self, session: _GatewaySession, frame: dict) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:
            await session.send(11, None)
        elif op == 2:
            self.identify_payloads.append(d)
            await session.send(0, self._ready_payload(session), "READY")
            await session.send(0, self._guild_payload(), "GUILD_CREATE")
            session.identified = True
            self._ready.set()
        elif op == 6:  # missed events are not replayed: the emulator keeps no backlog
            self.resume_payloads.append(d)
            session.identified = True
            await session.send(0, {}, "RESUMED")
        # op 3 (presence) and op 8 (member chunks) are accepted and ignored.

    def _ready_payload(self, session: _GatewaySession) -> dict:
        return {"v": 10, "user": self.bot_user, "session_id": session.session_id,
                "resume_gateway_url": self.gateway_url, "guilds": [{"id": self.guild_id, "unavailable": True}],
                "application": {"id": self.application_id, "flags": 0}, "private_channels": [],
                "relationships": [], "user_settings": {}}

    async def dispatch(self, event: str, data: dict) -> None:
        """Send a dispatch (op 0) to every identified gateway connection."""
        for session in list(self._sessions):
            if session.identified and not session.ws.closed:
                await session.send(0, data, event)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once a client IDENTIFYed and was sent READY + GUILD_CREATE."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the gateway sockets (discord.py reconnects and RESUMEs on code 4000)."""
        for session in list(self._sessions):
            await session.ws.close(code=code)

    # ---- pushing events as a user ------------------------------------------------------

    async def push_message(self, author: dict, content: str, channel_id: str | None = None,
                           mentions_bot: bool = False, reply_to: str | None = None,
                           thread: str | None = None, attachments: tuple = (),
                           ping_reply: bool = True) -> dict:
        """A user posts a message; MESSAGE_CREATE is dispatched. mentions_bot prefixes
        "<@BOT> " unless present; a reply pings the replied-to author (ping_reply), so a
        reply to the bot mentions the bot, as on Discord. attachments: [(filename, bytes)] or
        [(filename, bytes, content_type)] (default: guessed from the name, as Discord does); the
        payload lists them with a url on the emulator (its "CDN"), downloads recorded in `downloads`."""
        if mentions_bot and f"<@{self.bot_user_id}>" not in content:
            content = f"<@{self.bot_user_id}> {content}"
        # A user's client parses every mention; only the reply ping can be turned off.
        body: dict = {"content": content,
                      "allowed_mentions": {"parse": ["users", "roles", "everyone"], "replied_user": ping_reply}}
        cid = thread or channel_id or self.channel_id
        if reply_to is not None:
            ref = self.messages[str(reply_to)]
            body["message_reference"] = {"message_id": ref.id, "channel_id": ref.channel_id}
        msg = await self._create_message(cid, author, body, list(attachments), origin="user")
        return self.payload(msg)

    async def push_interaction(self, user: dict, name: str, options: dict | None = None, kind: int = 2,
                               focused: str | None = None, channel_id: str | None = None) -> dict:
        """A user runs slash command `name` (kind 2) or types into an option (kind 4,
        autocomplete: `focused` names the option, default the last). Returns the payload;
        emu.interactions[payload["id"]] records the callbacks."""
        cid = channel_id or self.channel_id
        opts = []
        for key, value in (options or {}).items():
            otype = {bool: 5, int: 4, float: 10}.get(type(value), 3)
            opts.append({"name": key, "type": otype, "value": value})
        if kind == 4 and opts:
            target = focused or opts[-1]["name"]
            for opt in opts:
                if opt["name"] == target:
                    opt["focused"] = True
        in_guild = self._guild_of(cid) is not None
        # Guild commands exist only in their guild; a DM sees the global ones.
        guild_cmd = next((c for c in self.commands.get(self.guild_id, []) if c["name"] == name), None)
        guild_cmd = guild_cmd if in_guild else None
        global_cmd = next((c for c in self.commands.get(None, []) if c["name"] == name), None)
        data = {"id": (guild_cmd or global_cmd or {}).get("id") or self.new_id(), "name": name, "type": 1,
                "options": opts}
        if guild_cmd:  # discord.py looks guild commands up under data.guild_id
            data["guild_id"] = self.guild_id
        inter = InteractionRecord(self.new_id(), secrets.token_urlsafe(32), name, kind, user, cid, time.monotonic())
        self.interactions[inter.id] = inter
        payload = {
            "id": inter.id, "type": kind, "token": inter.token, "version": 1, "application_id": self.application_id,
            "attachment_size_limit": 8 * 1024 * 1024, "channel": self.channels[cid], "channel_id": cid,
            "data": data, "app_permissions": str(EVERYONE_PERMISSIONS), "locale": "en-US", "entitlements": []}
        payload |= self._interaction_context(user) if in_guild else self._dm_interaction_context(user)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    def _interaction_context(self, user: dict) -> dict:
        return {"guild_id": self.guild_id, "guild": {"id": self.guild_id, "locale": "en-US", "features": []},
                "member": self._member_payload(user["id"], with_user=True) | {"user": user},
                "guild_locale": "en-US", "authorizing_integration_owners": {"0": self.guild_id}, "context": 0}

    @staticmethod
    def _dm_interaction_context(user: dict) -> dict:
        # In the bot's DM: a top-level user instead of guild and member; context 1 is BOT_DM,
        # and a guild install is authorized there with the owner "0".
        return {"user": user, "authorizing_integration_owners": {"0": "0"}, "context": 1}

    # ---- assertion helpers -------------------------------------------------------------

    def bot_messages(self, channel_id: str | None = None) -> list[StoredMessage]:
        """Messages authored by the bot (REST, interaction and follow-ups), oldest first."""
        return [m for m in self.messages.values() if m.author["id"] == self.bot_user_id
                and (channel_id is None or m.channel_id == str(channel_id))]

    def find_requests(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.requests if r.method == method.upper() and re.search(path_regex, r.path)]

    def channel_writes(self, channel_id: str, accepted_only: bool = True) -> list[Request]:
        """Message creates and edits (REST, not interaction webhooks) sent to the channel, in
        arrival order; accepted_only: only those answered 2xx, i.e. that wrote something."""
        writes = [r for r in self.requests if write_channel(r.method, r.path) == str(channel_id)]
        return [r for r in writes if 200 <= (r.status or 0) < 300] if accepted_only else writes

    def max_writes_in_window(self, channel_id: str, period: float = 5.0) -> int:
        """The most write attempts (refused and faulted ones too) to the channel that arrived
        within any `period`-second sliding window: a client within budget keeps this <= limit."""
        return max_in_window([r.time for r in self.channel_writes(channel_id, accepted_only=False)], period)


# -- fixtures for the modules that test against the emulator (import them there) -------------
@pytest.fixture
def restore_discord_urls(monkeypatch):
    """Route.BASE / DEFAULT_GATEWAY are class attributes: undo the redirection after each test."""
    import discord

    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)


@pytest.fixture
def no_swallowed_discord_errors(caplog):
    """discord.py logs (and swallows) exceptions raised in event handlers and commands."""
    yield
    assert_no_swallowed_errors(caplog.records, ("discord",))
