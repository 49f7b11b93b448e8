"""The Slack emulator against a bare slack-bolt AsyncApp (no modelbot code)."""

import asyncio
import json
import math
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
                async with http.get(result["file"]["url_private"],
                                    headers={"Authorization": f"Bearer {emu.bot_token}"}) as resp:
                    assert await resp.read() == b"hello bytes"
                async with http.get(result["file"]["url_private"]) as resp:  # no token: Slack's sign-in page
                    assert resp.status == 200 and resp.content_type == "text/html"
                    assert b"hello bytes" not in await resp.read()
            assert emu.downloads == [(f.id, True), (f.id, False)]

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


def test_rate_limit_refuses_with_honest_retry_after_and_retry_gets_through():
    async def scenario():
        async with SlackEmulator(rate_limits={"chat.update": (2, 2.0)}) as emu:
            bare, retrying = make_client(emu, rate_limit_retries=False), make_client(emu)
            posted = await bare.chat_postMessage(channel=emu.channel, text="v0")
            update = {"channel": emu.channel, "ts": posted["ts"]}
            emu.fail_next("chat.update", 500)  # an injected fault neither counts nor is counted
            with pytest.raises(SlackApiError):
                await bare.chat_update(**update, text="faulted")
            await bare.chat_update(**update, text="v1")
            await asyncio.sleep(0.5)
            await bare.chat_update(**update, text="v2")
            with pytest.raises(SlackApiError) as err:
                await bare.chat_update(**update, text="refused")
            assert err.value.response.status_code == 429 and err.value.response["error"] == "ratelimited"
            first_ok, refused = emu.find_requests("chat.update")[1], emu.rate_limited[-1]
            # the whole seconds until the oldest admitted call leaves the window (here 2.0 - ~0.5)
            remaining = first_ok.time + 2.0 - refused.time
            assert err.value.response.headers["Retry-After"] == str(math.ceil(remaining)) == "2"
            assert (refused.status, refused.error) == (429, "ratelimited")
            assert [h[0] for h in emu.messages[posted["ts"]].history] == ["v0", "v1", "v2"]  # never reached

            # AsyncRateLimitErrorRetryHandler waits Retry-After and then gets through
            await retrying.chat_update(**update, text="v3")
            assert emu.messages[posted["ts"]].text == "v3"
            assert len(emu.rate_limited) == 2 and emu.rate_limited[0] is refused
            # attempts within ~0.5 s: faulted, v1, v2 and the two refused (v3 came 2 s later)
            assert emu.max_calls_in_window("chat.update", 2.0) == 5
            assert emu.max_calls_in_window("chat.update", 0.3) == 3  # v2 and the two refused

    asyncio.run(scenario())


def test_post_message_is_limited_per_channel_and_outage_recovers():
    async def scenario():
        async with SlackEmulator() as emu:  # the defaults: chat.postMessage 5 per 5 s per channel
            client = make_client(emu, rate_limit_retries=False)
            for i in range(5):
                await client.chat_postMessage(channel=emu.channel, text=f"m{i}")
            with pytest.raises(SlackApiError) as err:
                await client.chat_postMessage(channel=emu.channel, text="one too many")
            assert err.value.response.status_code == 429
            assert int(err.value.response.headers["Retry-After"]) == 5
            await client.chat_postMessage(channel=emu.other_channel, text="elsewhere")  # another bucket
            assert emu.max_calls_in_window("chat.postMessage", 5.0, channel=emu.channel) == 6
            assert emu.max_calls_in_window("chat.postMessage", 5.0, channel="#random") == 1

            emu.outage(0.3)
            with pytest.raises(SlackApiError) as err:
                await client.auth_test()
            assert (err.value.response.status_code, err.value.response["error"]) == (500, "internal_error")
            emu.outage(0.3, status=503)
            with pytest.raises(SlackApiError) as err:
                await client.chat_postMessage(channel=emu.other_channel, text="down")
            assert (err.value.response.status_code, err.value.response["error"]) == (503, "service_unavailable")
            assert (emu.requests[-1].status, emu.requests[-1].error) == (503, "service_unavailable")
            assert len(emu.bot_messages(emu.other_channel)) == 1 and len(emu.rate_limited) == 1
            await asyncio.sleep(0.35)
            assert (await client.auth_test())["ok"]

    asyncio.run(scenario())


def test_chat_stream_helper_and_streaming_errors():
    async def scenario():
        async with SlackEmulator() as emu:
            client = make_client(emu, rate_limit_retries=False)
            alice = emu.user("alice")
            question = emu.post_user_message(alice, "explain", mention=True)
            stream = await client.chat_stream(channel=emu.channel, thread_ts=question.ts, buffer_size=1,
                                              recipient_user_id=alice, recipient_team_id=emu.team_id)
            await stream.append(markdown_text="**hello ")
            (msg,) = emu.bot_messages(thread_ts=question.ts)
            assert (msg.origin, msg.streaming, msg.markdown) == ("stream", True, "**hello ")
            await stream.append(markdown_text="world**")
            await stream.stop()
            assert [r.method for r in emu.requests] == ["chat.startStream", "chat.appendStream", "chat.stopStream"]
            assert (msg.text, msg.markdown, msg.streaming) == ("**hello world**", "**hello world**", False)
            assert [h[0] for h in msg.history] == ["**hello ", "**hello world**", "**hello world**"]
            thread = await client.conversations_replies(channel=emu.channel, ts=question.ts)
            assert [m["text"] for m in thread["messages"]][1:] == ["**hello world**"]

            async def error_of(call, **kwargs):
                with pytest.raises(SlackApiError) as err:
                    await call(**kwargs)
                return err.value.response["error"]

            start = {"channel": emu.channel, "thread_ts": question.ts}
            assert await error_of(client.chat_stopStream, channel=emu.channel, ts=msg.ts) == \
                "message_not_in_streaming_state"
            assert await error_of(client.chat_appendStream, channel=emu.channel, ts="1.000001",
                                  markdown_text="x") == "message_not_found"
            assert await error_of(client.chat_startStream, **start, markdown_text="x") == "missing_recipient_user_id"
            assert await error_of(client.chat_startStream, **start, markdown_text="x",
                                  recipient_user_id=alice) == "missing_recipient_team_id"
            assert await error_of(client.chat_startStream, **start, markdown_text="x" * 12_001,
                                  recipient_user_id=alice, recipient_team_id=emu.team_id) == "msg_too_long"
            # in a DM no recipient is needed; markdown_text directly, blocks at the stop
            im = emu.im_channel(alice)
            dm_question = emu.post_user_message(alice, "hi", channel=im)
            started = await client.chat_startStream(channel=im, thread_ts=dm_question.ts, markdown_text="a")
            await client.chat_stopStream(channel=im, ts=started["ts"], markdown_text="b",
                                         blocks=[{"type": "divider"}])
            dm = emu.messages[started["ts"]]
            assert (dm.text, dm.blocks, dm.streaming) == ("ab", [{"type": "divider"}], False)

        async with SlackEmulator(streaming=False) as emu:
            client = make_client(emu, rate_limit_retries=False)
            assert await error_of(client.chat_startStream, channel=emu.channel, thread_ts="1.1",
                                  markdown_text="x") == "unknown_method"

    asyncio.run(scenario())


def test_assistant_thread_status_prompts_and_dms():
    async def scenario():
        async with SlackEmulator() as emu:
            app = AsyncApp(client=make_client(emu), signing_secret=SECRET)
            seen: list[dict] = []

            @app.event("assistant_thread_started")
            async def started(event, client):
                thread = event["assistant_thread"]
                await client.assistant_threads_setSuggestedPrompts(
                    channel_id=thread["channel_id"], thread_ts=thread["thread_ts"],
                    prompts=[{"title": "Hi", "message": "Say hi"}])

            @app.event("message")
            async def message(event, client):
                seen.append(event)
                thread = event.get("thread_ts") or event["ts"]
                await client.assistant_threads_setStatus(channel_id=event["channel"], thread_ts=thread,
                                                         status="is thinking...")
                await client.chat_postMessage(channel=event["channel"], thread_ts=thread, text="hello")

            bob = emu.user("bob")
            im = emu.im_channel(bob)
            assert emu.im_channel(bob) == im and im.startswith("D")
            async with socket_mode(emu, app):
                # a plain DM reaches the message listener as channel_type im
                eid, event = await emu.push_dm(bob, "psst")
                await emu.wait_for(lambda: emu.bot_messages(im))
                assert seen[0]["channel_type"] == "im" and seen[0]["channel"] == im and eid in emu.acks
                # the status was shown, then cleared by the answer in the thread
                assert [s for s, _ in emu.statuses[(im, event["ts"])]] == ["is thinking...", ""]
                assert emu.status_of(im, event["ts"]) == ""

                # the assistant view: a thread root by the bot, then the user's message in it
                _, opened = await emu.push_assistant_thread_started(bob, context_channel=emu.channel)
                thread = opened["assistant_thread"]
                assert (thread["channel_id"], thread["context"]["channel_id"]) == (im, emu.channel)
                assert emu.messages[thread["thread_ts"]].subtype == "assistant_app_thread"
                prompts = await emu.wait_for(lambda: emu.suggested_prompts)
                assert prompts[0]["thread_ts"] == thread["thread_ts"] and prompts[0]["channel_id"] == im
                await emu.push_dm(bob, "a question", thread_ts=thread["thread_ts"])
                answer = await emu.wait_for(lambda: emu.bot_messages(im, thread_ts=thread["thread_ts"]))
                assert seen[1]["thread_ts"] == thread["thread_ts"] and answer[0].text == "hello"

            # an IM channel works with postMessage, replies and history like any other
            client = make_client(emu)
            replies = await client.conversations_replies(channel=im, ts=thread["thread_ts"])
            assert [m["text"] for m in replies["messages"]] == ["New Assistant Thread", "a question", "hello"]
            assert replies["messages"][0]["subtype"] == "assistant_app_thread"
            await client.chat_postMessage(channel=im, text="top level")
            history = await client.conversations_history(channel=im)
            assert history["messages"][0]["text"] == "top level"
            await client.assistant_threads_setTitle(channel_id=im, thread_ts=thread["thread_ts"], title="Q")
            assert emu.titles[(im, thread["thread_ts"])] == "Q"

    asyncio.run(scenario())


def test_deliver_raw_sends_exact_bytes_and_sign_matches_bolt():
    async def scenario():
        received: list[tuple[bytes, dict]] = []

        async def capture(request: web.Request) -> web.Response:
            received.append((await request.read(), dict(request.headers)))
            return web.Response(text="seen")

        capture_app = web.Application()
        capture_app.router.add_post("/raw", capture)
        runner = web.AppRunner(capture_app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with SlackEmulator() as emu:
                body = b'{"type": "event_callback", "event": {'  # truncated JSON
                headers = {"X-Custom": "1", **emu.sign(body, SECRET, "not-a-number")}
                url = f"http://127.0.0.1:{runner.addresses[0][1]}/raw"
                assert await emu.deliver_raw(url, body, headers) == (200, "seen")
                raw, got = received[0]
                assert raw == body and got["X-Slack-Request-Timestamp"] == "not-a-number"
                assert got["X-Slack-Signature"] == headers["X-Slack-Signature"]
                assert "Content-Type" not in got and "User-Agent" not in got

                # sign() over the raw bytes is what bolt verifies
                app = make_app(emu)
                async with http_mode(app) as events_url:
                    event = json.dumps(emu.event_callback(emu.app_mention(emu.user("al"), "raw"))).encode()
                    signed = {"Content-Type": "application/json", **emu.sign(event, SECRET, str(int(time.time())))}
                    assert (await emu.deliver_raw(events_url, event, signed))[0] == 200
                    await emu.wait_for(lambda: emu.bot_messages() and emu.bot_messages()[0].text == "pong!")
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
