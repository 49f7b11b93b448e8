"""A local Discord-compatible server for testing the real discord.py over the wire.

The emulator speaks Discord's REST API (aiohttp web app under /api/v10) and its gateway
(a websocket at /ws/) on 127.0.0.1 with an ephemeral port, so the real discord.py client
runs unmodified against it.  Point discord.py at it with::

    discord.http.Route.BASE = emu.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)

A plain ``discord.Client`` never calls GET /gateway: it connects to DEFAULT_GATEWAY
directly (AutoShardedClient calls GET /gateway/bot, which is served too).

The world is fixed: one guild with two text channels, the bot user, an admin role and the
human users that tests create.  Everything the client sends is recorded in
``emu.requests``; every message (users', the bot's, interaction responses) is stored in
``emu.messages`` with its edit history.  Faults (429, 403, ...) are injected with
``fail_next``.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from emulator_base import LocalServer, assert_no_swallowed_errors, take_fault

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"

# Permission bits the @everyone role grants (view, send, embed, attach, history,
# reactions, app commands, threads): enough that the bot is never blocked by accident.
EVERYONE_PERMISSIONS = sum(1 << b for b in (6, 10, 11, 14, 15, 16, 31, 35, 38))
ADMIN_PERMISSIONS = 1 << 3
LOADING_FLAG, EPHEMERAL_FLAG = 128, 64

# Default bodies for injected errors, shaped like Discord's (message + code).
ERROR_BODIES = {
    400: ("Invalid Form Body", 50035),
    401: ("401: Unauthorized", 0),
    403: ("Missing Permissions", 50013),
    404: ("Unknown Message", 10008),
    500: ("Internal Server Error", 0),
}


def _json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # discord.py only parses JSON when Content-Type is *exactly* application/json, so no
    # charset suffix (aiohttp's json_response would add one).
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=hdrs)


def _error(status: int, message: str, code: int) -> web.Response:
    return _json_response({"message": message, "code": code}, status)


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
    status: int | None = None  # status returned, filled in after handling


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
    guild_id: str
    history: list = field(default_factory=list)  # [{"content", "time"}], creation first
    attachments: list = field(default_factory=list)  # [{"id", "filename", "data"}]
    message_reference: dict | None = None
    mentions: list = field(default_factory=list)
    embeds: list = field(default_factory=list)
    flags: int = 0
    interaction_id: str | None = None
    member: dict | None = None
    deleted: bool = False
    timestamp: str = field(default_factory=_iso_now)
    edited_timestamp: str | None = None


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
                 gateway_compression: bool = False):
        super().__init__()
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
        self._faults: list[_Fault] = []
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

    def _guild_payload(self) -> dict:
        text = [c for c in self.channels.values() if c["type"] != 11]
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
        API-relative path) with `status`. 429s carry what discord.py needs to retry."""
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, retry_after, times, body))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        return take_fault(self._faults, lambda f: f.method in ("*", method) and f.path_re.search(path))

    @staticmethod
    def _fault_response(fault: _Fault) -> web.Response:
        if fault.status == 429:
            # Without `Via` discord.py assumes a Cloudflare ban and raises instead of retrying.
            retry = fault.retry_after if fault.retry_after is not None else 0.5
            headers = {"Via": "1.1 google", "Retry-After": str(max(1, round(retry))),
                       "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": f"{time.time() + retry:.3f}", "X-RateLimit-Reset-After": f"{retry:.3f}",
                       "X-RateLimit-Bucket": "emu-" + secrets.token_hex(4), "X-RateLimit-Scope": "user"}
            body = fault.body or {"message": "You are being rate limited.", "retry_after": retry, "global": False}
            return _json_response(body, 429, headers)
        message, code = ERROR_BODIES.get(fault.status, ("Error", 0))
        return _json_response(fault.body or {"message": message, "code": code}, fault.status)

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
        fault = self._take_fault(request.method, path)
        try:
            response = self._fault_response(fault) if fault else await handler(request)
        except web.HTTPException as exc:  # unknown route or method: a JSON error like Discord's
            response = _error(exc.status, f"{exc.status}: {exc.reason}", 0)
        rec.status = response.status
        return response

    # ---- REST routes -------------------------------------------------------------------

    def _add_rest_routes(self, r: web.UrlDispatcher) -> None:
        p = API_PREFIX
        r.add_get(p + "/users/@me", lambda _: _json_response(self.bot_user))
        r.add_get(p + "/oauth2/applications/@me", self._app_info)
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
                               "owner": self.owner, "flags": 0, "bot": self.bot_user})

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
        msg.deleted = True
        await self.dispatch("MESSAGE_DELETE", {"id": msg.id, "channel_id": msg.channel_id, "guild_id": self.guild_id})
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
        for msg in self.messages.values():
            for att in msg.attachments:
                if att["id"] == request.match_info["aid"]:
                    return web.Response(body=att["data"], content_type="application/octet-stream")
        return web.Response(status=404)

    # ---- messages ----------------------------------------------------------------------

    def _attachment(self, filename: str, data: bytes) -> dict:
        return {"id": self.new_id(), "filename": filename, "data": data}

    def payload(self, msg: StoredMessage, with_reference: bool = True) -> dict:
        """The message as Discord sends it (REST responses and gateway dispatches)."""
        atts = [{"id": a["id"], "filename": a["filename"], "size": len(a["data"]),
                 "url": f"{self.http_base}/attachments/{a['id']}/{a['filename']}",
                 "proxy_url": f"{self.http_base}/attachments/{a['id']}/{a['filename']}"} for a in msg.attachments]
        data = {"id": msg.id, "channel_id": msg.channel_id, "guild_id": msg.guild_id, "author": msg.author,
                "content": msg.content, "timestamp": msg.timestamp, "edited_timestamp": msg.edited_timestamp,
                "tts": False, "mention_everyone": False, "mentions": msg.mentions, "mention_roles": [],
                "attachments": atts, "embeds": msg.embeds, "pinned": False, "components": [],
                "type": 19 if msg.message_reference else 0, "flags": msg.flags}
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

    def _mentions(self, content: str, reference: dict | None, replied_user: bool) -> list:
        ids = re.findall(r"<@!?(\d+)>", content)
        ref = self.messages.get(reference["message_id"]) if reference else None
        if ref is not None and replied_user:  # a reply pings the replied-to author by default
            ids.append(ref.author["id"])
        users = [self.users[i] for i in dict.fromkeys(ids) if i in self.users]
        return [{**u, "member": self._member_payload(u["id"])} for u in users]

    async def _create_message(self, channel_id: str, author: dict, body: dict, files: list, origin: str,
                              interaction_id: str | None = None) -> StoredMessage:
        ref = body.get("message_reference")
        if ref:
            ref = {"message_id": str(ref["message_id"]), "channel_id": str(ref.get("channel_id") or channel_id),
                   "guild_id": self.guild_id}
        replied_user = (body.get("allowed_mentions") or {}).get("replied_user", True)
        content = body.get("content") or ""
        msg = StoredMessage(
            id=self.new_id(), channel_id=channel_id, author=author, content=content, origin=origin,
            guild_id=self.guild_id, message_reference=ref, embeds=body.get("embeds") or [],
            flags=int(body.get("flags") or 0), interaction_id=interaction_id,
            attachments=[self._attachment(n, d) for n, d in files],
            mentions=self._mentions(content, ref, replied_user),
            member=self._member_payload(author["id"]) if author["id"] in self.members else None)
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
        msg.history.append({"content": msg.content, "time": time.monotonic()})
        if not msg.flags & EPHEMERAL_FLAG:
            await self.dispatch("MESSAGE_UPDATE", self.payload(msg))

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
            msg.deleted = True
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
        reply to the bot mentions the bot, as on Discord. attachments: [(filename, bytes)]."""
        if mentions_bot and f"<@{self.bot_user_id}>" not in content:
            content = f"<@{self.bot_user_id}> {content}"
        body: dict = {"content": content, "allowed_mentions": {"replied_user": ping_reply}}
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
        guild_cmd = next((c for c in self.commands.get(self.guild_id, []) if c["name"] == name), None)
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
            "guild_id": self.guild_id, "guild": {"id": self.guild_id, "locale": "en-US", "features": []},
            "member": self._member_payload(user["id"], with_user=True) | {"user": user},
            "data": data, "app_permissions": str(EVERYONE_PERMISSIONS), "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": self.guild_id}, "context": 0}
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    # ---- assertion helpers -------------------------------------------------------------

    def bot_messages(self, channel_id: str | None = None) -> list[StoredMessage]:
        """Messages authored by the bot (REST, interaction and follow-ups), oldest first."""
        return [m for m in self.messages.values() if m.author["id"] == self.bot_user_id
                and (channel_id is None or m.channel_id == str(channel_id))]

    def find_requests(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in self.requests if r.method == method.upper() and re.search(path_regex, r.path)]


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
