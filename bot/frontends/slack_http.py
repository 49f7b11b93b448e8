"""Slack's HTTP mode: Bolt's request URL behind the checks every request passes first.

A request must be signed by Slack (X-Slack-Signature over the raw body, timestamp within
5 minutes) before anything reads it, and well formed before Bolt parses it: a malformed
one gets 400 and one log line, never a traceback, and no request body is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from urllib.parse import parse_qs

from bot.frontends.slack_settings import SlackSettings

log = logging.getLogger(__name__)


def guarded_web_app(app, settings: SlackSettings):
    """Bolt's aiohttp application for `app`, with the checks in front of it."""
    from aiohttp import web

    secret = settings.signing_secret.encode()

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.method != "POST":
            return await handler(request)
        body = await request.read()  # aiohttp keeps it for Bolt
        problem, status = _check(request, body, secret)
        if problem:
            log.warning("slack: refused a request to %s from %s: %s", request.path, request.remote, problem)
            return web.Response(status=status, text=problem)
        return await handler(request)

    web_app = app.web_app(path=settings.path, port=settings.port)
    web_app.middlewares.append(guard)
    return web_app


def _check(request, body: bytes, secret: bytes) -> tuple[str, int]:
    """What is wrong with the request ("" if nothing) and the status that says so."""
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    if not timestamp or not signature:
        return "not signed", 401
    if not timestamp.isdigit():
        return "malformed timestamp", 400
    if abs(time.time() - int(timestamp)) > 5 * 60 or not hmac.compare_digest(signature, _signature(secret, timestamp, body)):
        return "bad or stale signature", 401
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8", 400
    try:
        if request.content_type == "application/json":
            json.loads(text)
        else:
            payload = parse_qs(text).get("payload")
            if payload:
                json.loads(payload[0])
    except ValueError:
        return "malformed JSON", 400
    return "", 0


def _signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Slack's request signature, over the raw bytes (slack_sdk's verifier wants text, and a
    body that is not UTF-8 must get its 400, not a traceback)."""
    return "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
