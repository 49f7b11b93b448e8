"""The Discord emulator against a bare discord.py Client (no modelbot code)."""

import asyncio
import io
from contextlib import asynccontextmanager

import discord
import pytest
import yarl
from discord import app_commands
from discord_emulator import DiscordEmulator, no_swallowed_discord_errors, restore_discord_urls  # noqa: F401


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
        async with connected(client) as emu:
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
