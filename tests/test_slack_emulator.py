"""The Slack emulator against a bare slack-bolt AsyncApp (no modelbot code)."""

import asyncio
import time
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler, async_default_handlers
from slack_sdk.web.async_client import AsyncWebClient
from slack_emulator import SlackEmulator, no_swallowed_slack_errors  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_swallowed_slack_errors")

SECRET = "s"


def make_client(emu: SlackEmulator, token: str = "xoxb-test", rate_limit_retries: bool = True) -> AsyncWebClient:
    # slack_sdk's default async retry handlers only retry connection errors: 429s need
    # AsyncRateLimitErrorRetryHandler added explicitly.
    handlers = async_default_handlers() + ([AsyncRateLimitErrorRetryHandler(max_retry_count=2)]
                                           if rate_limit_retries else [])
    return AsyncWebClient(token=token, base_url=emu.api_base, retry_handlers=handlers)


def make_app(emu: SlackEmulator) -> AsyncApp:
    """Answers a mention with a threaded "pong" edited to "pong!"; /ask acks and then
    answers in the channel through response_url."""
    # The token goes on the client only: AsyncApp(token=..., client=...) logs a warning
    # that the client's token wins.
    app = AsyncApp(client=make_client(emu), signing_secret=SECRET)
    app.seen_retry_nums = []

    @app.event("app_mention")
    async def on_mention(event, client, request):
        # bolt request headers are lists of values
        app.seen_retry_nums.append((request.headers.get("x-slack-retry-num") or [None])[0])
        thread = event.get("thread_ts") or event["ts"]
        reply = await client.chat_postMessage(channel=event["channel"], thread_ts=thread, text="pong")
        await client.chat_update(channel=reply["channel"], ts=reply["ts"], text="pong!")

    @app.command("/ask")
    async def ask(ack, respond, command):
        await ack("thinking")
        await respond(text=f"answer: {command['text']}", response_type="in_channel")

    return app


@asynccontextmanager
async def socket_mode(emu: SlackEmulator, app: AsyncApp):
    handler = AsyncSocketModeHandler(app, "xapp-test")  # its web client is the app's
    await handler.connect_async()
    try:
        await emu.wait_socket_connected()
        yield handler
    finally:
        await handler.close_async()


@asynccontextmanager
async def http_mode(app: AsyncApp):
    """Serve the app with bolt's aiohttp server app; yields its /slack/events URL."""
    runner = web.AppRunner(app.web_app(path="/slack/events"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    finally:
        await runner.cleanup()


def test_socket_mode_mention_ack_reply_and_edit():
    async def scenario():
        async with SlackEmulator() as emu:
            app = make_app(emu)
            async with socket_mode(emu, app):
                opened = emu.find_requests("apps.connections.open")
                assert opened and opened[0].token == "xapp-test" and opened[0].ok
                alice = emu.user("alice")

                eid, event = await emu.push_mention(alice, "hello")
                assert event["text"] == f"<@{emu.bot_user_id}> hello"
                await emu.wait_for(lambda: eid in emu.acks)
                assert emu.acks[eid].payload is None  # events are acked with an empty envelope
                assert emu.acks[eid].time - emu.envelopes[eid].time < 3
                await emu.wait_for(lambda: emu.bot_messages() and emu.bot_messages()[0].text == "pong!")
                (reply,) = emu.bot_messages(emu.channel, thread_ts=event["ts"])
                assert [h[0] for h in reply.history] == ["pong", "pong!"]
                assert reply.bot_id == emu.bot_id and reply.origin == "api"
                # bolt calls auth.test once, on the first event; every call used the bot token
                assert [r.method for r in emu.requests if r.token == "xoxb-test"] == [
                    "auth.test", "chat.postMessage", "chat.update"]
                assert all(r.status == 200 and r.ok for r in emu.requests)
                # Slack's first delivery carries retry_attempt 0: bolt turns it into a header "0"
                assert app.seen_retry_nums == ["0"]

                # A Slack retry of the same event arrives as retry 1 (an app must not answer twice;
                # this bare app does, which shows the retry got through).
                eid2 = await emu.redeliver(eid, "timeout")
                await emu.wait_for(lambda: eid2 in emu.acks and len(emu.bot_messages()) == 2)
                assert app.seen_retry_nums == ["0", "1"]

                # conversations.replies returns the stored thread, parent first
                client = make_client(emu)
                thread = await client.conversations_replies(channel=emu.channel, ts=event["ts"])
                assert [m["text"] for m in thread["messages"]] == [event["text"], "pong!", "pong!"]
                assert thread["messages"][0]["reply_count"] == 2
                assert thread["messages"][1]["bot_id"] == emu.bot_id

                # A reply inside the thread is answered in the same thread
                _, in_thread = await emu.push_mention(alice, "more", thread_ts=event["ts"])
                await emu.wait_for(lambda: len(emu.bot_messages(thread_ts=event["ts"])) == 3)

                # Slack asks for a reconnect: the client opens a new URL and keeps working
                await emu.request_socket_refresh()
                await emu.wait_for(lambda: len(emu.socket_connections) == 2, timeout=10)
                eid3, _ = await emu.push_mention(alice, "after refresh")
                await emu.wait_for(lambda: eid3 in emu.acks and len(emu.bot_messages()) == 4)
                assert len(emu.find_requests("apps.connections.open")) == 2

    asyncio.run(scenario())


def test_socket_mode_slash_command_ack_and_response_url():
    async def scenario():
        async with SlackEmulator() as emu:
            app = make_app(emu)
            async with socket_mode(emu, app):
                cmd = emu.slash_command(emu.user("bob"), "/ask", "why?")
                eid = await emu.push_socket_event("slash_commands", cmd)
                await emu.wait_for(lambda: eid in emu.acks)
                assert emu.acks[eid].payload == {"text": "thinking"}
                posts = await emu.wait_for(lambda: emu.response_posts[cmd["command_id"]])
                assert posts[0]["json"]["text"] == "answer: why?"
                assert posts[0]["json"]["response_type"] == "in_channel"
                assert [m.text for m in emu.bot_messages(emu.channel)] == ["answer: why?"]
                assert emu.bot_messages()[0].origin == "response_url"

    asyncio.run(scenario())


def test_http_mode_signed_requests():
    async def scenario():
        async with SlackEmulator() as emu:
            app = make_app(emu)
            async with http_mode(app) as url:
                alice = emu.user("alice")
                body = emu.event_callback(emu.app_mention(alice, "over http"))

                # unsigned, stale and wrongly signed requests are refused before any listener runs
                assert (await emu.deliver(url, body, None))[0] == 401
                assert (await emu.deliver(url, body, SECRET, timestamp=int(time.time()) - 600))[0] == 401
                assert (await emu.deliver(url, body, "wrong secret"))[0] == 401
                assert emu.requests == [] and app.seen_retry_nums == []

                # a signed one is acked at once and answered in the thread
                status, text, took = await emu.deliver(url, body, SECRET)
                assert status == 200 and took < 3
                await emu.wait_for(lambda: emu.bot_messages() and emu.bot_messages()[0].text == "pong!")
                assert emu.bot_messages()[0].thread_ts == body["event"]["ts"]
                assert app.seen_retry_nums == [None]  # HTTP first deliveries carry no retry header

                # a retry carries X-Slack-Retry-Num
                status, _, _ = await emu.deliver(url, body, SECRET, retry_num=1)
                assert status == 200
                await emu.wait_for(lambda: len(app.seen_retry_nums) == 2)
                assert app.seen_retry_nums[1] == "1"

                # a slash command is form-encoded; the ack is the HTTP response, the answer
                # goes to response_url
                cmd = emu.slash_command(alice, "/ask", "http?")
                headers, raw = emu.signed_request(cmd, SECRET)
                assert headers["Content-Type"] == "application/x-www-form-urlencoded"
                status, text, _ = await emu.deliver(url, cmd, SECRET)
                assert (status, text) == (200, "thinking")  # ack(str) is a text/plain body over HTTP
                posts = await emu.wait_for(lambda: emu.response_posts[cmd["command_id"]])
                assert posts[0]["json"]["text"] == "answer: http?"

    asyncio.run(scenario())


def test_rate_limited_update_is_retried_after_retry_after():
    async def scenario():
        async with SlackEmulator() as emu:
            app = make_app(emu)
            async with socket_mode(emu, app):
                emu.fail_next("chat.update", 429, retry_after=1)
                await emu.push_mention(emu.user("alice"), "hello")
                await emu.wait_for(lambda: emu.bot_messages() and emu.bot_messages()[0].text == "pong!", timeout=10)
                first, second = emu.find_requests("chat.update")
                assert (first.status, first.error, second.status, second.ok) == (429, "ratelimited", 200, True)
                assert first.params == second.params
                # slack_sdk sleeps int(Retry-After) plus up to 1 s of jitter
                assert 1.0 <= second.time - first.time < 2.5

            # without AsyncRateLimitErrorRetryHandler a 429 is raised, not retried
            bare = make_client(emu, rate_limit_retries=False)
            emu.fail_next("chat.postMessage", 429, retry_after=1)
            with pytest.raises(SlackApiError) as err:
                await bare.chat_postMessage(channel=emu.channel, text="x")
            assert err.value.response.status_code == 429
            assert err.value.response.headers["Retry-After"] == "1"
            assert err.value.response["error"] == "ratelimited"

    asyncio.run(scenario())


def test_files_upload_v2_and_errors():
    async def scenario():
        async with SlackEmulator() as emu:
            client = make_client(emu)
            parent = emu.post_user_message(emu.user("carol"), "a question", mention=True)
            result = await client.files_upload_v2(channel=emu.channel, content=b"hello bytes", filename="hello.txt",
                                                  title="Hello", initial_comment="here you go",
                                                  thread_ts=parent.ts)
            assert result["file"]["name"] == "hello.txt" and result["file"]["title"] == "Hello"
            assert [r.method for r in emu.requests] == ["files.getUploadURLExternal", "files.completeUploadExternal"]
            (f,) = emu.files.values()
            assert (f.data, f.completed, f.channel, f.thread_ts) == (b"hello bytes", True, emu.channel, parent.ts)
            (share,) = emu.bot_messages(thread_ts=parent.ts)
            assert share.text == "here you go" and share.files == [f.id]
            async with aiohttp.ClientSession() as http:
                async with http.get(result["file"]["url_private"]) as resp:
                    assert await resp.read() == b"hello bytes"

            # Slack-style errors: HTTP 200 with ok false, raised by slack_sdk as SlackApiError
            with pytest.raises(SlackApiError) as err:
                await client.chat_update(channel=emu.channel, ts=parent.ts, text="not mine")
            assert err.value.response["error"] == "cant_update_message"
            with pytest.raises(SlackApiError) as err:
                await client.chat_postMessage(channel="C0NOPE", text="x")
            assert err.value.response["error"] == "channel_not_found"
            with pytest.raises(SlackApiError) as err:
                await make_client(emu, token="xoxb-wrong").auth_test()
            assert err.value.response["error"] == "invalid_auth"
            emu.fail_next("chat.postMessage", 200, error="not_in_channel")
            with pytest.raises(SlackApiError) as err:
                await client.chat_postMessage(channel=emu.channel, text="x")
            assert err.value.response["error"] == "not_in_channel"
            # form-encoded calls (blocks as a JSON string) are understood too
            posted = await client.api_call("chat.postMessage", data={
                "channel": emu.channel, "text": "t", "blocks": '[{"type": "divider"}]'})
            assert emu.messages[posted["ts"]].blocks == [{"type": "divider"}]

    asyncio.run(scenario())
