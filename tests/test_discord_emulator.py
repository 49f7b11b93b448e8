"""The Discord emulator against a bare discord.py Client (no modelbot code)."""

import asyncio
import io
import time
from contextlib import asynccontextmanager

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord_emulator import DiscordEmulator, no_swallowed_discord_errors, restore_discord_urls  # noqa: F401
from emulator_base import assert_no_swallowed_errors


# every test here: discord.py's URLs restored afterwards, and no exception swallowed by discord.py
pytestmark = pytest.mark.usefixtures("restore_discord_urls", "no_swallowed_discord_errors")


def make_client() -> discord.Client:
    intents = discord.Intents.default()
    intents.message_content = True
    return discord.Client(intents=intents, chunk_guilds_at_startup=False, guild_ready_timeout=0.1)


@asynccontextmanager
async def connected(client: discord.Client, **emu_kwargs):
    """Start an emulator, point discord.py at it, run the client until the block ends."""
    async with DiscordEmulator(**emu_kwargs) as emu:
        discord.http.Route.BASE = emu.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)
        ready = asyncio.Event()
        client.event(_on_ready(ready))
        task = asyncio.create_task(client.start("emulated-token"))
        try:
            await emu.wait_ready(timeout=10)
            await asyncio.wait_for(ready.wait(), 10)
            yield emu
        finally:
            await client.close()
            await asyncio.wait_for(task, 10)


def _on_ready(ready: asyncio.Event):
    async def on_ready():
        ready.set()
    return on_ready


def make_pong_client():
    """Replies "pong" to mentions, edits it to "pong!", uploads a file, and fetches the
    message replied to (reply-chain walking)."""
    client = make_client()
    client.errors, client.fetched = [], []

    @client.event
    async def on_message(message: discord.Message):
        if message.author == client.user or client.user not in message.mentions:
            return
        if message.reference is not None:
            ref = await message.channel.fetch_message(message.reference.message_id)
            client.fetched.append(ref.content)
        try:
            reply = await message.reply("pong")
        except discord.Forbidden as exc:
            client.errors.append(exc)
            return
        await reply.edit(content="pong!")
        await message.channel.send("file", file=discord.File(io.BytesIO(b"hello bytes"), "hello.txt"))

    return client


def test_messages_edits_files_and_faults():
    async def scenario():
        client = make_pong_client()
        async with connected(client, rate_limit=(5, 1.0)) as emu:  # 16 writes: short windows keep it fast
            paths = [(r.method, r.path) for r in emu.requests]
            assert ("GET", "/users/@me") in paths and ("GET", "/oauth2/applications/@me") in paths
            assert emu.identify_payloads[0]["intents"] & discord.Intents.message_content.flag
            assert client.get_channel(int(emu.channel_id)).name == "general"
            alice = emu.user("alice")

            # A mention gets a reply, an edit and a file upload.
            pushed = await emu.push_message(alice, "hello", mentions_bot=True)
            assert pushed["content"].startswith(f"<@{emu.bot_user_id}>")
            await emu.wait_for(lambda: len(emu.bot_messages()) == 2 and emu.bot_messages()[0].content == "pong!")
            reply, upload = emu.bot_messages(emu.channel_id)
            assert reply.message_reference["message_id"] == pushed["id"]
            assert [h["content"] for h in reply.history] == ["pong", "pong!"]
            assert reply.origin == "rest" and reply.author["id"] == emu.bot_user_id
            assert [(a["filename"], a["data"]) for a in upload.attachments] == [("hello.txt", b"hello bytes")]
            post = emu.find_requests("POST", r"/messages$")[0]
            assert post.json["message_reference"]["message_id"] == int(pushed["id"])
            assert all(r.status == 200 for r in emu.requests)

            # An injected 429 on the edit is waited out and retried by discord.py.
            emu.fail_next("PATCH", r"^/channels/\d+/messages/\d+$", 429, retry_after=0.3)
            await emu.push_message(alice, "again", mentions_bot=True)
            await emu.wait_for(lambda: len(emu.bot_messages()) == 4)  # pong + file, after the edit
            first, second = emu.find_requests("PATCH", "")[1:]
            assert (first.status, second.status) == (429, 200)
            assert first.path == second.path
            assert second.time - first.time >= 0.3
            assert emu.bot_messages()[2].content == "pong!"

            # An injected 403 reaches the client as discord.Forbidden; the next send works.
            emu.fail_next("POST", r"/messages$", 403)
            await emu.push_message(alice, "forbidden", mentions_bot=True)
            await emu.wait_for(lambda: client.errors)
            assert client.errors[0].code == 50013 and client.errors[0].status == 403
            assert len(emu.bot_messages()) == 4
            await emu.push_message(alice, "recovered", mentions_bot=True)
            await emu.wait_for(lambda: len(emu.bot_messages()) == 6)

            # Replying to the bot pings it; the bot fetches the message replied to.
            last_pong = emu.bot_messages()[-2]
            reply_msg = await emu.push_message(alice, "follow-up", reply_to=last_pong.id)
            assert reply_msg["referenced_message"]["content"] == "pong!"
            await emu.wait_for(lambda: len(emu.bot_messages()) == 8)
            assert client.fetched == ["pong!"]
            assert emu.find_requests("GET", rf"/channels/{emu.channel_id}/messages/{last_pong.id}$")

            # A message in the other channel is answered there.
            await emu.push_message(alice, "elsewhere", channel_id=emu.other_channel_id, mentions_bot=True)
            await emu.wait_for(lambda: len(emu.bot_messages(emu.other_channel_id)) == 2)

            # discord.py paced itself by the X-RateLimit-* headers: the limiter refused nothing.
            assert not emu.rate_limited

    asyncio.run(scenario())


def test_threads_compressed_gateway_and_resume():
    async def scenario():
        client = make_pong_client()
        created = []
        client.event(_collect(created))
        async with connected(client, gateway_compression=True) as emu:
            bob = emu.user("bob", roles=[emu.admin_role_id])
            thread = await emu.create_thread("chat", owner_id=bob["id"])
            await emu.wait_for(lambda: created)
            assert created[0].id == int(thread["id"]) and created[0].parent_id == int(emu.channel_id)
            assert emu.gateway_connections[0]["compress"] == "zlib-stream"
            await emu.push_message(bob, "in thread", thread=thread["id"], mentions_bot=True)
            await emu.wait_for(lambda: len(emu.bot_messages(thread["id"])) == 2)
            fetched = await client.fetch_channel(int(thread["id"]))
            assert isinstance(fetched, discord.Thread) and fetched.owner_id == int(bob["id"])

            # A dropped gateway connection is RESUMEd and events flow again.
            await emu.drop_connection(4000)
            await emu.wait_for(lambda: emu.resume_payloads)
            assert emu.resume_payloads[0]["token"] == "emulated-token"
            await emu.push_message(bob, "after resume", mentions_bot=True)
            await emu.wait_for(lambda: len(emu.bot_messages(emu.channel_id)) == 2)

    asyncio.run(scenario())


def _collect(created):
    async def on_thread_create(thread):
        created.append(thread)
    return on_thread_create


def make_command_client():
    client = make_client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="ask", description="Ask the model")
    async def ask(interaction: discord.Interaction, prompt: str, model: str = "gemma"):
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content=f"{model}: {prompt}")
        await interaction.followup.send("more", file=discord.File(io.BytesIO(b"log"), "log.txt"))

    @ask.autocomplete("model")
    async def model_choices(interaction: discord.Interaction, current: str):
        return [app_commands.Choice(name=m, value=m) for m in ("gemma", "smollm2") if current in m]

    async def setup_hook():
        await tree.sync()

    client.setup_hook = setup_hook
    return client


def test_slash_command_sync_defer_edit_followup_and_autocomplete():
    async def scenario():
        client = make_command_client()
        async with connected(client) as emu:
            put = emu.find_requests("PUT", rf"^/applications/{emu.application_id}/commands$")
            assert put and put[0].json[0]["name"] == "ask"
            assert [o["name"] for o in emu.commands[None][0]["options"]] == ["prompt", "model"]
            alice = emu.user("alice")

            payload = await emu.push_interaction(alice, "ask", {"prompt": "hi"})
            inter = emu.interactions[payload["id"]]
            await emu.wait_for(lambda: [m for m in emu.bot_messages() if m.origin == "webhook"])
            assert [c["type"] for c in inter.callbacks] == [5]
            original = emu.messages[inter.original_id]
            assert [h["content"] for h in original.history] == ["", "gemma: hi"]
            assert original.origin == "interaction" and not original.flags & 128
            assert emu.find_requests("PATCH", rf"/webhooks/{emu.application_id}/{inter.token}/messages/@original")
            followup = emu.bot_messages()[-1]
            assert followup.origin == "webhook" and followup.content == "more"
            assert followup.attachments[0]["data"] == b"log"

            payload = await emu.push_interaction(alice, "ask", {"prompt": "x", "model": "sm"}, kind=4,
                                                 focused="model")
            inter = emu.interactions[payload["id"]]
            await emu.wait_for(lambda: inter.callbacks)
            assert inter.callbacks[0]["type"] == 8
            assert inter.choices == [{"name": "smollm2", "value": "smollm2"}]

    asyncio.run(scenario())


def test_interaction_deadline_and_expired_token():
    async def scenario():
        client = make_client()
        tree = app_commands.CommandTree(client)
        outcomes, gate = [], asyncio.Event()

        @tree.command(name="slow", description="Answers too late")
        async def slow(interaction: discord.Interaction):
            await asyncio.sleep(0.3)
            try:
                await interaction.response.send_message("late")
            except discord.NotFound as exc:
                outcomes.append(exc.code)

        @tree.command(name="long", description="Outlives its token")
        async def long(interaction: discord.Interaction):
            await interaction.response.defer()
            await gate.wait()
            try:
                await interaction.edit_original_response(content="done")
            except discord.HTTPException as exc:
                outcomes.append(exc.code)
                await interaction.channel.send("done")  # the fallback: a plain channel message

        async with connected(client, ack_deadline=0.1) as emu:
            carol = emu.user("carol")
            await emu.push_interaction(carol, "slow")
            await emu.wait_for(lambda: outcomes)
            assert outcomes == [10062]
            assert not emu.bot_messages()

            payload = await emu.push_interaction(carol, "long")
            await emu.wait_for(lambda: emu.interactions[payload["id"]].callbacks)
            emu.expire_interaction(payload["id"])
            gate.set()
            await emu.wait_for(lambda: [m for m in emu.bot_messages() if m.origin == "rest"])
            assert outcomes == [10062, 50027]
            assert emu.bot_messages()[-1].content == "done"

    asyncio.run(scenario())


def test_unknown_route_is_recorded_as_json_404():
    async def scenario():
        client = make_client()
        async with connected(client) as emu:
            with pytest.raises(discord.NotFound):
                await client.http.request(discord.http.Route("GET", "/nowhere"))
            assert emu.requests[-1].path == "/nowhere" and emu.requests[-1].status == 404

    asyncio.run(scenario())


# ---- rate limits ---------------------------------------------------------------------------

def fixed_windows(times: list[float], period: float) -> list[int]:
    """Accepted writes per window, each window opened by the first write after the last ended."""
    counts, end = [], float("-inf")
    for t in sorted(times):
        if t >= end:
            counts.append(0)
            end = t + period
        counts[-1] += 1
    return counts


def test_concurrent_sends_wait_out_the_channel_bucket():
    async def scenario():
        client = make_client()
        async with connected(client, rate_limit=(5, 1.0)) as emu:
            channel = client.get_channel(int(emu.channel_id))
            start = time.monotonic()
            sent = await asyncio.wait_for(asyncio.gather(*(channel.send(f"m{i}") for i in range(12))), 10)
            assert sorted(m.content for m in sent) == sorted(f"m{i}" for i in range(12))
            assert time.monotonic() - start >= 2.0  # 12 writes need three 1 s windows

            accepted = emu.channel_writes(emu.channel_id)
            attempts = emu.channel_writes(emu.channel_id, accepted_only=False)
            assert len(accepted) == 12 and len(attempts) == 12 + len(emu.rate_limited)
            assert max(fixed_windows([r.time for r in accepted], 1.0)) <= 5
            times = [r.time for r in attempts]
            assert emu.max_writes_in_window(emu.channel_id, 1.0) == max(
                sum(t <= u < t + 1.0 for u in times) for t in times)
            assert emu.max_writes_in_window(emu.channel_id, 60) == len(attempts)
            assert emu.channel_writes(emu.other_channel_id) == []

            # A bucket exhausted behind discord.py's back: it gets a 429 and waits out retry_after.
            url = f"{emu.api_base}/channels/{emu.other_channel_id}/messages"
            async with aiohttp.ClientSession() as http:
                assert [(await http.post(url, json={"content": "x"})).status for _ in range(5)] == [200] * 5
            refused_before = len(emu.rate_limited)
            other = client.get_channel(int(emu.other_channel_id))
            assert (await asyncio.wait_for(other.send("waited"), 5)).content == "waited"
            refused, retried = emu.rate_limited[refused_before], emu.channel_writes(emu.other_channel_id)[-1]
            assert refused.path == retried.path
            assert retried.time >= emu.channel_writes(emu.other_channel_id)[0].time + 1.0

    asyncio.run(scenario())


def test_bucket_headers_and_429_over_plain_http():
    async def scenario():
        async with DiscordEmulator() as emu, aiohttp.ClientSession() as http:  # the default 5 per 5 s
            url = f"{emu.api_base}/channels/{emu.channel_id}/messages"
            answers = [await http.post(url, json={"content": f"m{i}"}) for i in range(4)]
            first_id = (await answers[0].json())["id"]
            answers.append(await http.patch(f"{url}/{first_id}", json={"content": "edited"}))
            assert [a.status for a in answers] == [200] * 5
            assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0"]
            assert {a.headers["X-RateLimit-Bucket"] for a in answers} == {answers[0].headers["X-RateLimit-Bucket"]}
            assert all(a.headers["X-RateLimit-Limit"] == "5" for a in answers)
            reset_after = float(answers[0].headers["X-RateLimit-Reset-After"])
            assert 4.5 < reset_after <= 5.0
            assert abs(float(answers[0].headers["X-RateLimit-Reset"]) - (time.time() + reset_after)) < 0.2

            # Deletes and other channels are outside this bucket.
            delete = await http.delete(f"{url}/{first_id}")
            other = await http.post(f"{emu.api_base}/channels/{emu.other_channel_id}/messages", json={"content": "x"})
            assert (delete.status, other.status) == (204, 200)

            limited = await http.post(url, json={"content": "one too many"})
            body = await limited.json()
            window_left = emu.channel_writes(emu.channel_id)[0].time + 5.0 - emu.rate_limited[0].time
            assert limited.status == 429 and emu.rate_limited[0].status == 429
            assert limited.headers["Via"] and limited.headers["Retry-After"] == "5"
            assert limited.headers["X-RateLimit-Remaining"] == "0"
            assert limited.headers["X-RateLimit-Scope"] == "user"
            assert limited.headers["X-RateLimit-Bucket"] == answers[0].headers["X-RateLimit-Bucket"]
            assert body["message"] == "You are being rate limited." and body["global"] is False
            assert abs(body["retry_after"] - window_left) < 0.1
            assert abs(float(limited.headers["X-RateLimit-Reset-After"]) - window_left) < 0.1
            assert len(emu.bot_messages(emu.channel_id)) == 4  # the refused write wrote nothing

        async with DiscordEmulator(rate_limit=(2, 0.5)) as emu, aiohttp.ClientSession() as http:
            url = f"{emu.api_base}/channels/{emu.channel_id}/messages"
            statuses = [(await http.post(url, json={"content": "x"})).status for _ in range(3)]
            assert statuses == [200, 200, 429]
            await asyncio.sleep((await _retry_after(http, url))["retry_after"])
            after = await http.post(url, json={"content": "after the window"})
            assert after.status == 200 and after.headers["X-RateLimit-Remaining"] == "1"

    asyncio.run(scenario())


async def _retry_after(http: aiohttp.ClientSession, url: str) -> dict:
    """Ask once more inside the exhausted window: the 429's body says how long is left."""
    answer = await http.post(url, json={"content": "still limited"})
    assert answer.status == 429
    return await answer.json()


def test_global_limit_refuses_with_global_true():
    async def scenario():
        async with DiscordEmulator(global_rate_limit=(3, 0.5)) as emu, aiohttp.ClientSession() as http:
            statuses = [(await http.get(f"{emu.api_base}/users/@me")).status for _ in range(3)]
            limited = await http.get(f"{emu.api_base}/users/@me")
            body = await limited.json()
            assert statuses == [200] * 3 and limited.status == 429
            assert limited.headers["X-RateLimit-Global"] == "true"
            assert limited.headers["X-RateLimit-Scope"] == "global" and limited.headers["Via"]
            assert body["global"] is True and 0 < body["retry_after"] <= 0.5
            assert emu.rate_limited == [emu.requests[-1]]
            # Interaction endpoints are not bound to the global limit.
            callback = await http.post(f"{emu.api_base}/interactions/1/nope/callback", json={"type": 1})
            assert callback.status == 404

        # discord.py stops all requests for the global retry_after, then retries.
        client = make_client()
        async with connected(client, global_rate_limit=(4, 0.5)) as emu:
            infos = await asyncio.wait_for(asyncio.gather(*(client.application_info() for _ in range(8))), 10)
            assert len(infos) == 8 and emu.rate_limited
            refused = {id(r) for r in emu.rate_limited}
            assert all(r.status == 200 for r in emu.requests if id(r) not in refused)

    asyncio.run(scenario())


# ---- faults --------------------------------------------------------------------------------

def test_dropped_connection_and_outage(caplog):
    async def scenario():
        client = make_client()
        seen = []
        client.event(_collect_messages(seen))
        async with connected(client) as emu:
            channel = client.get_channel(int(emu.channel_id))
            emu.fail_next("POST", r"/messages$", 0)
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await channel.send("lost")
            assert emu.requests[-1].status == 0 and not emu.bot_messages()
            assert (await channel.send("after the drop")).content == "after the drop"

            emu.outage(0.5)
            for _ in range(2):
                with pytest.raises(discord.DiscordServerError) as exc:
                    await channel.send("during")
                assert exc.value.status == 503 and exc.value.code == 0
            assert [r.status for r in emu.requests[-2:]] == [503, 503]
            await emu.push_message(emu.user("alice"), "the gateway still works")
            await emu.wait_for(lambda: seen)
            await asyncio.sleep(0.5)
            assert (await channel.send("back")).content == "back"
            assert [m.content for m in emu.bot_messages()] == ["after the drop", "back"]
            assert not emu.rate_limited
        assert_no_swallowed_errors(caplog.records, ("aiohttp",))  # the drop logged no traceback

    asyncio.run(scenario())


def test_faults_and_outages_do_not_count_against_the_bucket():
    async def scenario():
        async with DiscordEmulator(rate_limit=(2, 5.0)) as emu, aiohttp.ClientSession() as http:
            url = f"{emu.api_base}/channels/{emu.channel_id}/messages"
            emu.fail_next("POST", r"/messages$", 500, times=3)
            faulted = [await http.post(url, json={"content": "x"}) for _ in range(3)]
            assert [(a.status, (await a.json())["code"]) for a in faulted] == [(500, 0)] * 3
            emu.outage(0.2, status=502)
            down = [(await http.post(url, json={"content": "x"})).status for _ in range(3)]
            assert down == [502] * 3
            await asyncio.sleep(0.2)
            up = [(await http.post(url, json={"content": "x"})).status for _ in range(3)]
            assert up == [200, 200, 429] and emu.rate_limited == emu.requests[-1:]
            assert len(emu.channel_writes(emu.channel_id, accepted_only=False)) == 9
            assert len(emu.channel_writes(emu.channel_id)) == 2

    asyncio.run(scenario())


def _collect_messages(seen):
    async def on_message(message):
        seen.append(message)
    return on_message


# ---- DMs, pings, moderation ------------------------------------------------------------------

def test_direct_messages_and_dm_interactions():
    async def scenario():
        client = make_client()
        tree = app_commands.CommandTree(client)
        seen, ran = [], []

        @client.event
        async def on_message(message: discord.Message):
            if message.author != client.user:
                seen.append(message)
                await message.reply("dm reply")

        @tree.command(name="hello", description="Works in DMs")
        @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
        @app_commands.allowed_installs(guilds=True, users=False)
        @app_commands.default_permissions(manage_messages=True)
        async def hello(interaction: discord.Interaction):
            ran.append(interaction)
            await interaction.response.send_message("hi in DM")
            await interaction.followup.send("and more")

        async def setup_hook():
            await tree.sync()

        client.setup_hook = setup_hook
        async with connected(client) as emu:
            command = emu.commands[None][0]
            assert command["contexts"] == [0, 1] and command["integration_types"] == [0]
            assert command["default_member_permissions"] == discord.Permissions(manage_messages=True).value

            alice = emu.user("alice")
            dm = emu.dm_channel(alice)
            assert emu.dm_channel(alice) == dm and "guild_id" not in emu.channels[dm]
            pushed = await emu.push_message(alice, "hi bot", channel_id=dm)
            assert "guild_id" not in pushed and "member" not in pushed
            await emu.wait_for(lambda: emu.bot_messages(dm))
            message = seen[0]
            assert message.guild is None and isinstance(message.channel, discord.DMChannel)
            reply = emu.bot_messages(dm)[0]
            assert reply.content == "dm reply" and reply.guild_id is None
            assert reply.message_reference == {"message_id": pushed["id"], "channel_id": dm}
            fetched = await client.fetch_channel(int(dm))
            assert isinstance(fetched, discord.DMChannel) and fetched.recipient.id == int(alice["id"])

            payload = await emu.push_interaction(alice, "hello", channel_id=dm)
            assert payload["context"] == 1 and payload["user"] == alice
            assert not {"guild_id", "guild", "member"} & payload.keys()
            await emu.wait_for(lambda: len(emu.bot_messages(dm)) == 3)
            interaction = ran[0]
            assert interaction.guild is None and isinstance(interaction.channel, discord.DMChannel)
            assert interaction.user.id == int(alice["id"])
            assert [m.content for m in emu.bot_messages(dm)[1:]] == ["hi in DM", "and more"]
            assert not emu.bot_messages(emu.channel_id)

            await client.http.bulk_upsert_global_commands(client.application_id, [])
            assert emu.commands[None] == []

    asyncio.run(scenario())


def test_pings_follow_content_and_allowed_mentions():
    async def scenario():
        client = make_client()
        async with connected(client, rate_limit=(5, 1.0)) as emu:  # six writes: a short window
            channel = client.get_channel(int(emu.channel_id))
            bob, carol = emu.user("bob"), emu.user("carol")
            text = f"@everyone <@{bob['id']}> <@&{emu.admin_role_id}>"
            everything = {"users": [bob["id"]], "roles": [emu.admin_role_id], "everyone": True}
            nothing = {"users": [], "roles": [], "everyone": False}

            loud = await channel.send(text)
            stored = emu.messages[str(loud.id)]
            assert stored.pings == [everything] and stored.allowed_mentions_history == [None]
            assert loud.mention_everyone and [u.id for u in loud.mentions] == [int(bob["id"])]
            assert loud.raw_role_mentions == [int(emu.admin_role_id)]

            quiet = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
            stored = emu.messages[str(quiet.id)]
            assert stored.pings == [nothing] and stored.allowed_mentions_history == [{"parse": []}]
            assert not quiet.mention_everyone and not quiet.mentions

            # An edit without allowed_mentions parses everything again.
            quiet = await quiet.edit(content="@everyone listen")
            assert stored.pings[-1] == {**nothing, "everyone": True} and stored.allowed_mentions_history[-1] is None
            assert quiet.mention_everyone

            # Explicit ids only ping users who are also mentioned in the content.
            only_bob = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(int(bob["id"]))])
            picked = await channel.send(f"<@{bob['id']}> <@{carol['id']}>", allowed_mentions=only_bob)
            assert emu.messages[str(picked.id)].pings == [{**nothing, "users": [bob["id"]]}]

            # A reply pings the replied-to author unless mention_author=False.
            asked = await emu.push_message(carol, "question")
            partial = channel.get_partial_message(int(asked["id"]))
            pinging, silent = await partial.reply("answer"), await partial.reply("answer", mention_author=False)
            assert emu.messages[str(pinging.id)].pings == [{**nothing, "users": [carol["id"]]}]
            assert emu.messages[str(silent.id)].pings == [nothing]

    asyncio.run(scenario())


def test_moderator_deletion():
    async def scenario():
        client = make_client()
        deleted = []

        @client.event
        async def on_raw_message_delete(event: discord.RawMessageDeleteEvent):
            deleted.append(event)

        async with connected(client) as emu:
            channel = client.get_channel(int(emu.channel_id))
            message = await channel.send("soon gone")
            await emu.delete_message(str(message.id))
            await emu.wait_for(lambda: deleted)
            assert deleted[0].message_id == message.id and deleted[0].guild_id == int(emu.guild_id)
            assert emu.messages[str(message.id)].deleted
            with pytest.raises(discord.NotFound) as exc:
                await message.edit(content="too late")
            assert exc.value.code == 10008

    asyncio.run(scenario())
