"""The Discord frontend (discord.py): mentions, reply chains, threads, slash commands.

A mention gets a placeholder reply at once, which then grows by throttled edits
(bot/streaming.py) and continues in follow-up replies past 2000 characters. A conversation
is the reply chain: replying to the bot's answer continues it. Slash commands defer within
Discord's 3 s and answer through the interaction's webhook, falling back to plain channel
messages once the 15-minute interaction token has expired. Everything else (models,
commands, errors) is the host's, shared with the other frontends.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from typing import Any

from bot.frontends.discord_settings import DiscordSettings
from bot.commands import as_command, model_switch_refusal
from bot.frontends.message_reply import MessageReplyBase
from bot.host import ChatEvent, Host

log = logging.getLogger(__name__)

CHAIN_LIMIT = 50  # messages walked back along a reply chain
TOKEN_LIFETIME = 14 * 60  # an interaction token lasts 15 minutes; switch to channel messages before
_FOOTER_LINE = re.compile(r"\n?-# [^\n]*$")


def _quiet_voice_warning() -> None:
    """discord.py warns at start-up that voice needs an extra package; the bot never speaks."""
    logging.getLogger("discord.client").addFilter(lambda record: "voice will NOT be supported" not in record.getMessage())


def point_discord_py_at(settings: DiscordSettings) -> None:
    """discord.py keeps its REST base and gateway as class attributes: a Discord-compatible
    self-hosted server (or the test emulator) is a matter of setting them."""
    import discord
    import yarl

    discord.http.Route.BASE = settings.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


class DiscordFrontend:
    def __init__(self, host: Host, settings: DiscordSettings):
        import discord
        from discord import app_commands

        self.host = host
        self.settings = settings
        point_discord_py_at(settings)
        _quiet_voice_warning()
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: enable it in the developer portal (README)
        frontend = self

        class Client(discord.Client):
            async def setup_hook(self) -> None:
                await frontend._sync_commands()

            async def on_message(self, message: discord.Message) -> None:
                await frontend.on_message(message)

            async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
                frontend.on_prompt_deleted(payload.message_id)

            async def on_ready(self) -> None:
                log.info("discord: logged in as %s (%s)", self.user, self.user.id if self.user else "?")

        self.client = Client(intents=intents, chunk_guilds_at_startup=False, guild_ready_timeout=0.5)
        self.tree = app_commands.CommandTree(self.client)
        self._register_commands()
        self._answering: dict[int, asyncio.Task] = {}  # question message id -> the task answering it

    async def run(self) -> None:
        await self.client.start(self.settings.token)

    async def close(self) -> None:
        await self.client.close()

    # -- messages ---------------------------------------------------------------------------------
    async def on_message(self, message: Any) -> None:
        me = self.client.user
        if me is None or message.author.id == me.id or message.author.bot:
            return  # never answer itself or other bots (loops)
        if not await self._addressed(message):
            return
        text = as_command(self._without_mention(message.content))
        reply = MessageReply(message, self.settings)
        if not await reply.start():
            return  # no permission to post here: logged, nothing else to do
        self._answering[message.id] = asyncio.current_task()
        try:
            refusal = self._refuse_model_switch(message.author, text)
            if refusal:
                await reply.send(refusal)
                return
            history = [] if text.startswith("/") else await self._history(message)
            event = ChatEvent(channel=str(message.channel.id), user=str(message.author.id), text=text,
                              history=history)
            await self.host.handle(event, reply)
        except asyncio.CancelledError:
            # the question was deleted: the host's run_model has cancelled the worker job on its way out
            await reply.close(stopped="stopped: the message it answered was deleted")
            return
        finally:
            self._answering.pop(message.id, None)
        await reply.close()

    def on_prompt_deleted(self, message_id: int) -> None:
        """A deleted question needs no answer: stop generating it (and free its batch slot)."""
        task = self._answering.get(message_id)
        if task is not None:
            task.cancel()

    async def _addressed(self, message: Any) -> bool:
        """Mentioned, replied to, in a thread the bot owns, or a DM if allowed; and in an allowed channel."""
        import discord

        if message.guild is None:
            return self.settings.allow_dms
        channel = message.channel
        if self.settings.channels:
            parent = getattr(channel, "parent_id", None)
            if channel.id not in self.settings.channels and parent not in self.settings.channels:
                return False
        me = self.client.user
        if any(user.id == me.id for user in message.mentions):
            return True
        if isinstance(channel, discord.Thread) and channel.owner_id == me.id:
            return True
        referenced = await self._referenced(message)
        return referenced is not None and referenced.author.id == me.id

    def _without_mention(self, content: str) -> str:
        me = self.client.user
        return re.sub(rf"<@!?{me.id}>", "", content).strip()

    async def _referenced(self, message: Any) -> Any | None:
        import discord

        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        try:
            return await message.channel.fetch_message(reference.message_id)
        except (discord.NotFound, discord.Forbidden, discord.HTTPException):
            return None

    async def _history(self, message: Any) -> list[dict]:
        """The reply chain above `message`, oldest first; the bot's split replies are joined."""
        me = self.client.user
        turns: list[dict] = []
        current = message
        for _ in range(CHAIN_LIMIT):
            current = await self._referenced(current)
            if current is None:
                break
            if current.author.id == me.id:
                content = _FOOTER_LINE.sub("", current.content)
                if content.startswith(("⚠️", "…", "queued:")):
                    continue  # an error or a placeholder is not something the model said
                role = "assistant"
            else:
                content, role = self._without_mention(current.content), "user"
            if turns and turns[0]["role"] == role == "assistant":
                turns[0]["content"] = content + turns[0]["content"]  # parts of one split reply
            else:
                turns.insert(0, {"role": role, "content": content})
        return [turn for turn in turns if turn["content"].strip()]

    def _refuse_model_switch(self, author: Any, text: str) -> str | None:
        return model_switch_refusal(text, self.settings.model_switch, self._is_admin(author))

    def _is_admin(self, author: Any) -> bool:
        ids = {author.id, *(role.id for role in getattr(author, "roles", []))}
        return bool(ids & self.settings.admins)

    # -- slash commands ---------------------------------------------------------------------------
    def _register_commands(self) -> None:
        import discord
        from discord import app_commands

        names = self.host.settings.model_names

        async def complete_model(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()][:25]

        @self.tree.command(name="model", description="Show or switch this channel's model")
        @app_commands.describe(name="the model to use in this channel")
        @app_commands.autocomplete(name=complete_model)
        async def model(interaction: discord.Interaction, name: str | None = None) -> None:
            await self._run_command(interaction, f"/model {name}" if name else "/model")

        @self.tree.command(name="models", description="The configured models")
        async def models(interaction: discord.Interaction) -> None:
            await self._run_command(interaction, "/models")

        @self.tree.command(name="layers", description="A model's layers, 4-bit layers and memory footprint")
        @app_commands.describe(name="the model (default: this channel's)")
        @app_commands.autocomplete(name=complete_model)
        async def layers(interaction: discord.Interaction, name: str | None = None) -> None:
            await self._run_command(interaction, f"/layers {name}" if name else "/layers")

        @self.tree.command(name="compare", description="Run a prompt through several models")
        @app_commands.describe(prompt="what to ask", models="comma-separated model names (default: all)")
        async def compare(interaction: discord.Interaction, prompt: str, models: str | None = None) -> None:
            await self._run_command(interaction, f"/compare --models {models} {prompt}" if models else f"/compare {prompt}")

        for name, text, about in (("reset", "/reset", "Forget this channel's conversation"),
                                  ("stop", "/stop", "Stop the reply being generated here"),
                                  ("stats", "/stats", "Loaded models, memory, queue and speed"),
                                  ("help", "/help", "What the bot can do")):
            self.tree.command(name=name, description=about)(self._fixed_command(text))

    def _fixed_command(self, text: str):
        import discord

        async def command(interaction: discord.Interaction) -> None:
            await self._run_command(interaction, text)

        return command

    async def _run_command(self, interaction: Any, text: str) -> None:
        reply = InteractionReply(interaction, self.settings)
        await reply.start()  # deferred within Discord's 3 s
        try:
            refusal = self._refuse_model_switch(interaction.user, text)
            if refusal:
                await reply.send(refusal)
                return
            event = ChatEvent(channel=str(interaction.channel_id), user=str(interaction.user.id), text=text,
                              history=[])
            await self.host.handle(event, reply)
        finally:
            await reply.close()

    async def _sync_commands(self) -> None:
        import discord

        try:
            if self.settings.guilds:
                for guild_id in self.settings.guilds:
                    guild = discord.Object(id=guild_id)
                    self.tree.copy_global_to(guild=guild)
                    await self.tree.sync(guild=guild)
            else:
                await self.tree.sync()  # global commands can take a while to appear in clients
        except discord.HTTPException as exc:
            log.error("discord: syncing slash commands failed (%s); mentions still work", exc)


class _DiscordReply(MessageReplyBase):
    """Discord's edits; the posting is the subclass's (a reply, or an interaction's webhook)."""

    def __init__(self, settings: DiscordSettings):
        super().__init__(settings.message_limit, settings.edit_interval)
        self.settings = settings

    async def _edit(self, message: Any, text: str) -> Any:
        import discord

        try:
            await message.edit(content=text)
        except discord.Forbidden:
            log.error("discord: no permission to edit message %s in channel %s", message.id, message.channel.id)
        return None


class MessageReply(_DiscordReply):
    """Replies to a mention: a placeholder first, answers as replies to the user's message."""

    def __init__(self, message: Any, settings: DiscordSettings):
        super().__init__(settings)
        self.message = message

    async def start(self) -> bool:
        try:
            await self._start_placeholder()
        except Exception as exc:  # noqa: BLE001 - discord.Forbidden and friends: log where, and stop
            log.error("discord: cannot reply in channel %s (%s: %s); check the bot's Send Messages permission",
                      self.message.channel.id, type(exc).__name__, exc)
            return False
        return True

    async def send_file(self, filename: str, content: str, caption: str = "") -> None:
        import discord

        data = discord.File(io.BytesIO(content.encode("utf-8")), filename=filename)
        try:
            await self.message.channel.send(content=caption or None, file=data, reference=self.message,
                                            mention_author=False)
        except discord.Forbidden:
            log.error("discord: no permission to attach files in channel %s", self.message.channel.id)
            await self.send("I am not allowed to attach files here (Attach Files permission).")

    async def _post(self, text: str, previous: Any) -> Any:
        # each part replies to the one before, so that the reply chain holds the whole answer
        return await (previous or self.message).reply(text, mention_author=False)


class InteractionReply(_DiscordReply):
    """Answers to a slash command: the deferred response first, then follow-ups; after the
    token's 15 minutes, plain channel messages."""

    def __init__(self, interaction: Any, settings: DiscordSettings):
        super().__init__(settings)
        self.interaction = interaction
        self._deferred_at = 0.0
        self._used_original = False

    async def start(self) -> None:
        import discord

        self._deferred_at = time.monotonic()
        try:
            await self.interaction.response.defer(thinking=True)
        except discord.HTTPException as exc:  # too late (3 s) or gone: answer in the channel instead
            log.warning("discord: could not acknowledge /%s in time (%s); answering in the channel",
                        getattr(self.interaction.command, "name", "?"), exc)
            self._deferred_at = -float("inf")

    def _expired(self) -> bool:
        return time.monotonic() - self._deferred_at > TOKEN_LIFETIME

    async def send_file(self, filename: str, content: str, caption: str = "") -> None:
        import discord

        data = discord.File(io.BytesIO(content.encode("utf-8")), filename=filename)
        if self._expired():
            await self.interaction.channel.send(content=caption or None, file=data)
        elif not self._used_original:
            self._used_original = True
            await self.interaction.edit_original_response(content=caption or None, attachments=[data])
        else:
            await self.interaction.followup.send(content=caption or discord.utils.MISSING, file=data)

    async def _post(self, text: str, previous: Any) -> Any:
        if self._expired():
            return await self.interaction.channel.send(text)
        if not self._used_original:
            self._used_original = True
            return await self.interaction.edit_original_response(content=text)
        return await self.interaction.followup.send(text, wait=True)

    async def _edit(self, message: Any, text: str) -> Any:
        import discord

        if self._expired() and isinstance(message, (discord.InteractionMessage, discord.WebhookMessage)):
            return await self.interaction.channel.send(text)  # the token is gone: it can no longer be edited
        try:
            await message.edit(content=text)
        except discord.NotFound:
            return await self.interaction.channel.send(text)
        return None

    async def close(self, stopped: str | None = None) -> None:
        import discord

        await super().close(stopped)
        if not self._used_original and not self._expired():  # do not leave "is thinking…" forever
            self._used_original = True
            try:
                await self.interaction.edit_original_response(content="Done.")
            except discord.HTTPException as exc:
                log.warning("discord: could not close interaction %s: %s", self.interaction.id, exc)
