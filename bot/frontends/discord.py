"""The Discord frontend (discord.py): mentions, reply chains, threads, DMs, slash commands.

A mention gets a placeholder reply at once, which then grows by throttled edits
(bot/streaming.py) and continues in follow-up replies past 2000 characters. Every write in
a channel takes a slot of that channel's budget (Discord allows 5 message writes per 5 s
per channel) and of the bot-wide one, so many answers at once stay inside Discord's limits;
a 429, 5xx or network error is waited out and retried, never shown as the answer. Model text
never pings anyone (allowed_mentions: none). A conversation is the reply chain: replying to
the bot's answer continues it. Text files attached to a question join it (bot/attachments.py).
Slash commands, built from bot/command_table.py, defer within
Discord's 3 s and answer through the interaction's webhook (ephemerally for /help, /stats,
refusals and errors), falling back to channel messages once the 15-minute token expired.
The steps from question to answer are the shared intake's (bot/frontends/intake.py).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import re
import time
from typing import Any, Optional

from bot.attachments import AttachedFile
from bot.command_table import CommandSpec, offered
from bot.commands import as_command
from bot.frontends.discord_settings import DiscordSettings, check_ready, parse_discord_settings
from bot.frontends.intake import Intake, Places, Question
from bot.frontends.message_reply import MessageReplyBase
from bot.frontends.registry import FrontendType
from bot.host import Host
from bot.reasoning import without_thinking
from bot.reply import ReplyGone
from bot.streaming import TransientWriteError, deliver
from bot.write_budget import FINAL, KeyedWindows, WriteBudget, WriteWindow

log = logging.getLogger(__name__)

CHAIN_LIMIT = 50  # messages walked back along a reply chain
TOKEN_LIFETIME = 14 * 60  # an interaction token lasts 15 minutes; switch to channel messages before
BOT_WRITES_PER_SECOND = 45  # Discord's global limit is 50 requests a second; leave room for the rest
SHUTDOWN_TIMEOUT = 10.0
NOT_HERE = "I don't answer here. Ask me in one of the channels I am set up for."
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


async def platform_write(call, where: str):
    """A Discord write, with what Discord answered turned into what bot/streaming.py retries
    (rate limits, server and network errors) or ends quietly (the message was deleted)."""
    import aiohttp
    import discord

    try:
        return await call()
    except discord.NotFound as exc:
        raise ReplyGone(f"{where}: {exc.text or 'not found'}") from exc
    except discord.Forbidden as exc:
        log.error("discord: no permission to write in %s (%s); check the bot's Send Messages permission there",
                  where, exc.text)
        raise
    except discord.RateLimited as exc:
        raise TransientWriteError("rate limited", exc.retry_after) from exc
    except discord.HTTPException as exc:
        if exc.status == 429 or exc.status >= 500:
            raise TransientWriteError(f"HTTP {exc.status} {exc.text}".strip()) from exc
        raise
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise TransientWriteError(f"{type(exc).__name__}: {exc}") from exc


def attached_files(message: Any) -> tuple[AttachedFile, ...]:
    """The message's attachments; each downloads from Discord's CDN (Attachment.read) only
    once its name, type and size passed bot/attachments.py's checks."""
    return tuple(AttachedFile(a.filename, a.size, a.content_type, a.read) for a in message.attachments)


class DiscordFrontend:
    def __init__(self, host: Host, settings: DiscordSettings):
        import discord
        from discord import app_commands

        self.host = host
        self.settings = settings
        point_discord_py_at(settings)
        _quiet_voice_warning()
        self.places = Places(frozenset(str(c) for c in settings.channels), settings.allow_dms)
        self.intake = Intake(host, frontend="discord", model_switch=settings.model_switch, compare=settings.compare,
                             settings_change=settings.settings_change)
        self._channel_writes = KeyedWindows(settings.writes_per_channel, settings.write_window, "discord channel")
        self._bot_writes = WriteWindow(BOT_WRITES_PER_SECOND, 1.0, "discord bot-wide")
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: enable it in the developer portal (README)
        frontend = self

        class Client(discord.Client):
            async def setup_hook(self) -> None:
                await frontend._sync_commands()

            async def on_message(self, message: discord.Message) -> None:
                await frontend.on_message(message)

            async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
                frontend.intake.stop(payload.message_id)

            async def on_ready(self) -> None:
                log.info("discord: logged in as %s (%s)", self.user, self.user.id if self.user else "?")
                frontend.host.readiness.connected("discord", True)

            async def on_disconnect(self) -> None:  # discord.py reconnects by itself: not ready meanwhile
                frontend.host.readiness.connected("discord", False)

            async def on_resumed(self) -> None:
                frontend.host.readiness.connected("discord", True)

        # no model text (nor an echoed argument) ever pings anyone; a reply does not ping the asker
        self.client = Client(intents=intents, chunk_guilds_at_startup=False, guild_ready_timeout=0.5,
                             allowed_mentions=discord.AllowedMentions.none())
        self.tree = app_commands.CommandTree(
            self.client, allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=settings.allow_dms),
            allowed_installs=app_commands.AppInstallationType(guild=True, user=False))
        self._register_commands()

    async def run(self) -> None:
        await self.client.start(self.settings.token)

    async def drain(self, timeout: float = SHUTDOWN_TIMEOUT) -> int:
        """Take no new questions; end each answer in progress with the shutdown notice.
        Returns how many answers ran out of time."""
        return await self.intake.shutdown(timeout)

    async def close(self) -> None:
        await self.intake.shutdown(SHUTDOWN_TIMEOUT)  # a no-op after drain(); otherwise each answer says so first
        self.host.readiness.connected("discord", False)
        await self.client.close()

    def budget(self, channel_id: Any) -> WriteBudget:
        """The writes of one channel: its bucket and the bot-wide one."""
        return WriteBudget([self._channel_writes(str(channel_id)), self._bot_writes])

    # -- messages ---------------------------------------------------------------------------------
    async def on_message(self, message: Any) -> None:
        me = self.client.user
        if me is None or message.author.id == me.id or message.author.bot:
            return  # never answer itself or other bots (loops)
        if not self._allowed_place(message.channel, message.guild is None) or not await self._addressed(message):
            return
        question = Question(key=message.id, channel=str(message.channel.id), user=str(message.author.id),
                            text=as_command(self._without_mention(message.content)),
                            is_admin=self._is_admin(message.author), read_history=lambda: self._history(message),
                            files=attached_files(message))
        await self.intake.answer(question, MessageReply(message, self.settings, self.budget(message.channel.id)))

    def _allowed_place(self, channel: Any, dm: bool) -> bool:
        parent = getattr(channel, "parent_id", None)
        return self.places.allows(str(channel.id), parent=str(parent) if parent else None, dm=dm)

    async def _addressed(self, message: Any) -> bool:
        """A DM, a mention, a reply to the bot, or in a thread the bot owns."""
        import discord

        if message.guild is None:
            return True
        me = self.client.user
        if any(user.id == me.id for user in message.mentions):
            return True
        if isinstance(message.channel, discord.Thread) and message.channel.owner_id == me.id:
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
        return without_thinking(turns)

    def _is_admin(self, author: Any) -> bool:
        ids = {author.id, *(role.id for role in getattr(author, "roles", []))}
        return bool(ids & self.settings.admins)

    # -- slash commands ---------------------------------------------------------------------------
    def _register_commands(self) -> None:
        """Discord's application commands, from the command table (no /reset: a conversation
        here is a reply chain, which the bot cannot forget)."""
        import discord
        from discord import app_commands

        names = self.host.settings.model_names

        async def complete_model(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n.lower()][:25]

        def complete_from(choices: tuple[str, ...]):
            async def complete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
                return [app_commands.Choice(name=c, value=c) for c in choices if current.lower() in c.lower()][:25]
            return complete

        for spec in offered(host_keeps_history=False):
            command = app_commands.Command(name=spec.name, description=spec.summary,
                                           callback=self._command_callback(spec))
            for option in spec.options:
                if option.model_name:
                    command.autocomplete(option.name)(complete_model)
                elif option.choices:
                    command.autocomplete(option.name)(complete_from(option.choices))
            if ((spec.switches_model and self.settings.model_switch == "admins")
                    or (spec.changes_settings and self.settings.settings_change == "admins")
                    or (spec.name == "compare" and self.settings.compare == "admins")):
                # hidden from members without Manage Server; a server can grant it per role
                command.default_permissions = discord.Permissions(manage_guild=True)
            self.tree.add_command(command)

    def _command_callback(self, spec: CommandSpec):
        """A callback whose signature carries the spec's options: discord.py reads the options'
        names, types and descriptions from it."""
        import discord

        async def callback(interaction: discord.Interaction, **values: str | None) -> None:
            await self._run_command(interaction, spec, spec.as_text(values))

        parameters = [inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=discord.Interaction)]
        parameters += [inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY,
                                         default=inspect.Parameter.empty if option.required else None,
                                         annotation=str if option.required else Optional[str])
                       for option in spec.options]
        callback.__signature__ = inspect.Signature(parameters)
        callback.__discord_app_commands_param_description__ = {o.name: o.description for o in spec.options}
        return callback

    async def _run_command(self, interaction: Any, spec: CommandSpec, text: str) -> None:
        import discord

        if not self._allowed_place(interaction.channel, interaction.guild_id is None):
            try:  # the same places as mentions: nothing runs here
                await interaction.response.send_message(NOT_HERE, ephemeral=True)
            except discord.HTTPException as exc:
                log.warning("discord: could not refuse /%s in %s: %s", spec.name, interaction.channel_id, exc)
            return
        reply = InteractionReply(interaction, self.settings, self.budget(interaction.channel_id), spec.private)
        question = Question(key=("interaction", interaction.id), channel=str(interaction.channel_id),
                            user=str(interaction.user.id), text=text, is_admin=self._is_admin(interaction.user))
        await self.intake.answer(question, reply)

    async def _sync_commands(self) -> None:
        import discord

        try:
            if self.settings.guilds:
                for guild_id in self.settings.guilds:
                    guild = discord.Object(id=guild_id)
                    self.tree.copy_global_to(guild=guild)
                    await self.tree.sync(guild=guild)
                # guild commands only: global ones left from an earlier setup would show twice
                self.tree.clear_commands(guild=None)
                await self.tree.sync()
            else:
                await self.tree.sync()  # global commands can take a while to appear in clients
        except discord.HTTPException as exc:
            log.error("discord: syncing slash commands failed (%s); mentions still work", exc)


class _DiscordReply(MessageReplyBase):
    """Discord's edits; the posting is the subclass's (a reply, or an interaction's webhook)."""

    thinking_style = "spoiler"  # a reasoning model's thinking, when shown: click to reveal

    def __init__(self, settings: DiscordSettings, budget: WriteBudget, where: str):
        super().__init__(settings.message_limit, settings.edit_interval, post_budget=budget, edit_budget=budget,
                         name=f"discord reply in {where}")
        self.settings = settings
        self.where = where

    async def _edit(self, message: Any, text: str) -> Any:
        await platform_write(lambda: message.edit(content=text), self.where)
        return None

    async def _deliver(self, call) -> Any:
        return await deliver(lambda: platform_write(call, self.where), budget=self.post_budget, priority=FINAL,
                             retry=self.retry, what=self.name)


class MessageReply(_DiscordReply):
    """Replies to a mention: a placeholder first, answers as replies to the user's message."""

    def __init__(self, message: Any, settings: DiscordSettings, budget: WriteBudget):
        super().__init__(settings, budget, f"channel {message.channel.id}")
        self.message = message

    async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
        import discord

        raw = content if isinstance(content, bytes) else content.encode("utf-8")

        def upload():  # a discord.File is read once: a retry needs a new one
            data = discord.File(io.BytesIO(raw), filename=filename)
            return self.message.channel.send(content=caption or None, file=data, reference=self._reference(None),
                                             mention_author=False)

        try:
            await self._deliver(upload)
        except discord.Forbidden:
            await self.send("I am not allowed to attach files here (Attach Files permission).")

    def _reference(self, previous: Any) -> Any:
        # each part replies to the one before, so that the reply chain holds the whole answer;
        # a question deleted meanwhile leaves the answer standing on its own
        return (previous or self.message).to_reference(fail_if_not_exists=False)

    async def _post(self, text: str, previous: Any) -> Any:
        return await platform_write(lambda: self.message.channel.send(
            text, reference=self._reference(previous), mention_author=False), self.where)


class InteractionReply(_DiscordReply):
    """Answers to a slash command: the deferred response first, then follow-ups; after the
    token's 15 minutes, plain channel messages. Private commands (/help, /stats) answer
    ephemerally, and so do refusals and errors of the others."""

    def __init__(self, interaction: Any, settings: DiscordSettings, budget: WriteBudget, private: bool):
        super().__init__(settings, budget, f"channel {interaction.channel_id}")
        self.interaction = interaction
        self.private = private
        self._deferred_at = 0.0
        self._used_original = False

    async def start(self) -> bool:
        import discord

        self._deferred_at = time.monotonic()
        try:
            await self.interaction.response.defer(thinking=True, ephemeral=self.private)
        except discord.HTTPException as exc:  # too late (3 s) or gone: answer in the channel instead
            log.warning("discord: could not acknowledge /%s in time (%s); answering in the channel",
                        getattr(self.interaction.command, "name", "?"), exc)
            self._deferred_at = -float("inf")
        self._first = self._new_stream()  # shows progress in the deferred response; not posted before
        return True

    def _expired(self) -> bool:
        return time.monotonic() - self._deferred_at > TOKEN_LIFETIME

    async def notice(self, text: str) -> None:
        if self.private or self._expired():
            await self.send(text)  # already ephemeral (or no token left to be private with)
            return
        if not self._used_original:  # the public "is thinking…" would stay: take it away
            self._used_original = True
            if self._first is not None:
                self._first.abandon()
                self._first = None
            await self._deliver(self.interaction.delete_original_response)
        await self._deliver(lambda: self.interaction.followup.send(text, ephemeral=True))

    async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
        import discord

        raw = content if isinstance(content, bytes) else content.encode("utf-8")

        def upload():
            data = discord.File(io.BytesIO(raw), filename=filename)
            if self._expired():
                return self.interaction.channel.send(content=caption or None, file=data)
            if not self._used_original:
                self._used_original = True
                return self.interaction.edit_original_response(content=caption or None, attachments=[data])
            return self.interaction.followup.send(content=caption or discord.utils.MISSING, file=data,
                                                  ephemeral=self.private)

        await self._deliver(upload)

    async def _post(self, text: str, previous: Any) -> Any:
        if self._expired():
            return await platform_write(lambda: self.interaction.channel.send(text), self.where)
        if not self._used_original:
            message = await self._through_token(lambda: self.interaction.edit_original_response(content=text))
            self._used_original = True
            return message
        return await self._through_token(lambda: self.interaction.followup.send(text, wait=True,
                                                                               ephemeral=self.private))

    async def _edit(self, message: Any, text: str) -> Any:
        import discord

        if self._expired() and isinstance(message, (discord.InteractionMessage, discord.WebhookMessage)):
            # the token is gone: it can no longer be edited, the rest goes in the channel
            return await platform_write(lambda: self.interaction.channel.send(text), self.where)
        return await self._through_token(lambda: message.edit(content=text))

    async def _through_token(self, call) -> Any:
        """A write with the interaction's token; a token Discord no longer accepts (401) sends
        this and the rest of the answer to the channel instead."""
        import discord

        try:
            return await platform_write(call, self.where)
        except discord.HTTPException as exc:
            if exc.status != 401:
                raise
            self._deferred_at = -float("inf")
            raise TransientWriteError("the interaction token expired", retry_after=0) from exc

    async def close(self, stopped: str | None = None) -> None:
        import discord

        await super().close(stopped)
        if not self._used_original and not self._expired():  # do not leave "is thinking…" forever
            self._used_original = True
            try:
                await self._deliver(lambda: self.interaction.edit_original_response(content="Done."))
            except (discord.HTTPException, ReplyGone, TransientWriteError) as exc:
                log.warning("discord: could not close interaction %s: %s", self.interaction.id, exc)


FRONTEND = FrontendType("discord", parse_settings=parse_discord_settings, check_ready=check_ready,
                        create=DiscordFrontend)
