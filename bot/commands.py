"""Slash commands shared by every frontend; which ones exist, and how they are described,
is bot/command_table.py."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Awaitable, Callable

from bot.catalog import UnknownModel
from bot.channel_settings import SPECS, canonical, format_settings, parse_value, shown_value
from bot.command_table import BY_NAME, CommandSpec, offered
from bot.events import ChatEvent, format_footer
from bot.reply import Reply
from bot.reply import notice as _notice
from bot.text import text_table

if TYPE_CHECKING:
    from bot.config import ModelSpec
    from bot.host import Host
    from bot.inspect import LayerReport

Handler = Callable[[ChatEvent, str, Reply], Awaitable[None]]
# "show me the layers (of NAME)" in a chat message means /layers
_LAYERS_REQUEST = re.compile(
    r"^\s*(?:please\s+)?(?:show|list|display|print|give)\b.*?\blayers\b(?:\s+(?:of|for|in)\s+(?P<model>[\w.\-]+))?",
    re.IGNORECASE,
)


def as_command(text: str) -> str:
    """'show me the layers of gemma-2-2b' -> '/layers gemma-2-2b'; other text unchanged."""
    match = _LAYERS_REQUEST.match(text)
    if match is None:
        return text
    return f"/layers {match.group('model')}".strip() if match.group("model") else "/layers"


def model_switch_refusal(text: str, model_switch: str, is_admin: bool) -> str | None:
    """What a chat frontend answers to `/model NAME` from a non-admin where only admins may switch."""
    wants_switch = text.startswith("/model ") and text.split(maxsplit=1)[1].strip()
    if not wants_switch or model_switch != "admins" or is_admin:
        return None
    return "Only the bot's admins can switch models here. Ask one of them, or use /models to see what is available."


def compare_refusal(text: str, compare: str, is_admin: bool) -> str | None:
    """What a chat frontend answers to /compare from a non-admin where only admins may compare."""
    wants_compare = text.split(maxsplit=1)[0].lower() == "/compare" if text.strip() else False
    if not wants_compare or compare != "admins" or is_admin:
        return None
    return "Only the bot's admins can use /compare here (it loads every model in turn). Ask one of them."


def settings_refusal(text: str, settings_change: str, is_admin: bool) -> str | None:
    """What a chat frontend answers to a /settings change by a non-admin where only admins may
    change settings (showing them is for everyone)."""
    words = text.split()
    wants_change = bool(words) and words[0].lower() == "/settings" and (
        len(words) > 2 or (len(words) == 2 and words[1].lower() == "reset"))
    if not wants_change or settings_change != "admins" or is_admin:
        return None
    return "Only the bot's admins can change this channel's settings. /settings shows them."


class Commands:
    def __init__(self, host: "Host"):
        self.host = host

    async def dispatch(self, event: ChatEvent, text: str, reply: Reply) -> None:
        name, _, args = text[1:].partition(" ")
        spec = BY_NAME.get(name.lower())
        available = offered(event.history is None)
        if spec is None:
            names = ", ".join("/" + spec.name for spec in available)
            await _notice(reply, f"Unknown command /{name}. Commands: {names}")
            return
        if spec not in available:
            await _notice(reply, "Nothing to forget here: a conversation is the reply chain or thread it is in. "
                                 "Mention me in a new message to start afresh.")
            return
        handler: Handler = getattr(self, spec.name)
        await handler(event, args.strip(), PrivateReply(reply) if spec.private else reply)

    async def help(self, event: ChatEvent, args: str, reply: Reply) -> None:
        lines = ["Talk to me in plain text; I answer with this channel's model. Commands:"]
        lines += [_help_line(spec) for spec in offered(event.history is None)]
        await reply.send("\n".join(lines))

    async def models(self, event: ChatEvent, args: str, reply: Reply) -> None:
        host = self.host
        ready = set(host.engines.ready_models())
        current = host.channel_model(event.channel).name
        rows = [("", "name", "plugin", "engine", "quantization", "ready", "source")]
        for spec in host.settings.models:
            plugin = host.catalog.guess_backend_name(spec)
            owner = host.catalog.registry.owners.get(plugin, "")
            rows.append((
                "*" if spec.name == current else "",
                spec.name,
                f"{plugin} ({owner})" if owner else plugin,
                host.engines.for_model(spec.name).where(spec),
                spec.quantization if spec.engine == "local" else "(the server's)",
                "yes" if spec.name in ready else "no",
                spec.source or "-",
            ))
        await reply.send("```\n" + text_table(rows) + "\n```\n`*` = this channel's model")

    async def model(self, event: ChatEvent, args: str, reply: Reply) -> None:
        if not args:
            current = self.host.channel_model(event.channel)
            await reply.send(f"This channel uses {current.name}. Switch with /model NAME "
                             f"({', '.join(self.host.settings.model_names)}).")
            return
        spec = self.host.set_channel_model(event.channel, args.split()[0])
        await reply.send(f"This channel now uses {spec.name}.")

    async def layers(self, event: ChatEvent, args: str, reply: Reply) -> None:
        host = self.host
        spec = host.catalog.spec(args.split()[0]) if args else host.channel_model(event.channel)
        [report] = await self._inspect(event, [spec], reply)
        await reply.send(report.summary)  # Markdown with its own code block
        await reply.send_file(f"{spec.name}-layers.txt", report.full_tree, caption="full module tree")
        await reply.send_file(f"{spec.name}-layers.png", await _picture([report]), caption="layers as a picture")

    async def compare(self, event: ChatEvent, args: str, reply: Reply) -> None:
        host = self.host
        flags, rest = _compare_flags(args)
        if "layers" in flags:
            await self._compare_layers(event, flags, rest, reply)
            return
        names = _names(flags["models"]) if "models" in flags else list(host.settings.model_names)
        prompt = rest
        if not prompt or not names:
            await reply.send(COMPARE_USAGE)
            return
        for name in names:
            if host.settings.model(name) is None:
                raise UnknownModel(name, host.settings.model_names)
        with host.engines.reserve(event.user, names):  # one of the asker's requests, however many models
            for name in names:
                spec = host.settings.model(name)
                # each model gets its own labelled reply; a failing model does not stop the others
                await host.run_model(
                    spec, [{"role": "user", "content": prompt}], reply.stream(header=f"── {name} ──"), reply, event,
                    footer=lambda stats: format_footer(stats, with_footprint=True), reserved=True,
                )

    async def _compare_layers(self, event: ChatEvent, flags: dict[str, str], rest: str, reply: Reply) -> None:
        """/compare --layers a,b: no prompt; the models' layers side by side in one picture."""
        from bot.layers_picture import MAX_MODELS

        host = self.host
        names = _names(flags["layers"])
        if rest or "models" in flags or not 2 <= len(names) <= MAX_MODELS:
            await reply.send(f"Usage: /compare --layers a,b — two to {MAX_MODELS} models, no prompt: "
                             "their layers side by side in one picture.")
            return
        specs = [host.catalog.spec(name) for name in names]  # an unknown name says which exist
        reports = await self._inspect(event, specs, reply)
        await reply.send("\n".join(_report_line(report) for report in reports))
        await reply.send_file(f"{'-vs-'.join(names)}-layers.png", await _picture(reports),
                              caption="layers side by side")

    async def _inspect(self, event: ChatEvent, specs: list[ModelSpec], reply: Reply) -> list[LayerReport]:
        """Each model's LayerReport, with its progress shown; together they hold one of the
        asker's requests (max_pending_per_user), however many models."""
        host = self.host
        shown: list[asyncio.Task] = []  # progress reaches the chat before the report does
        reports = []
        with host.engines.reserve(event.user, [spec.name for spec in specs]):
            for spec in specs:
                reports.append(await host.engines.for_model(spec.name).inspect(
                    spec, lambda message: shown.append(asyncio.ensure_future(reply.progress(message)))))
        await asyncio.gather(*shown)
        return reports

    async def settings(self, event: ChatEvent, args: str, reply: Reply) -> None:
        host = self.host
        spec = host.channel_model(event.channel)
        words = args.split(maxsplit=1)
        cap = host.settings.worker.max_new_tokens
        if words and words[0].lower() == "reset":
            name = canonical(words[1]) if len(words) > 1 else None
            host.channel_settings.reset(event.channel, name)
            await reply.send(f"{name or 'Every setting'} is back to the model's own in this channel.")
            return
        if not words:
            defaults = await asyncio.to_thread(host.model_defaults, spec)
            await reply.send(format_settings(spec.name, host.channel_settings.get(event.channel), defaults, cap))
            return
        name = canonical(words[0])
        if len(words) == 1:
            await reply.send(f"{name}: {SPECS[name].what}; {SPECS[name].range.format(cap=cap)}. "
                             f"Set it with /settings {name} VALUE, or /settings reset {name}.")
            return
        value = parse_value(name, words[1], cap)
        host.channel_settings.set(event.channel, name, value)
        shown = "set" if name == "system" else shown_value(value)
        await reply.send(f"{name} is now {shown} in this channel, for whichever model it uses "
                         f"(/settings shows them all; /settings reset {name} undoes it).")

    async def reset(self, event: ChatEvent, args: str, reply: Reply) -> None:
        self.host.history.reset(event.channel)
        await reply.send("Conversation forgotten; the next message starts fresh.")

    async def stop(self, event: ChatEvent, args: str, reply: Reply) -> None:
        active = self.host.engines.active_jobs(event.channel)
        for stream in active:
            stream.cancel()
        await reply.send("Stopped." if active else "Nothing is being generated here.")


    async def stats(self, event: ChatEvent, args: str, reply: Reply) -> None:
        from bot.stats import format_stats

        await reply.send("```\n" + format_stats(self.host.engines.snapshot()) + "\n```")


def _help_line(spec: CommandSpec) -> str:
    return f"/{spec.name} {spec.usage}".rstrip() + f" — {spec.summary}"


class PrivateReply:
    """A command answered to the asker only (/help, /stats): messages become notices."""

    def __init__(self, reply: Reply):
        self._reply = reply

    async def send(self, text: str) -> None:
        await _notice(self._reply, text)

    async def notice(self, text: str) -> None:
        await _notice(self._reply, text)

    def __getattr__(self, name: str):
        return getattr(self._reply, name)


def _names(listed: str) -> list[str]:
    """'a, b,a' -> ['a', 'b']."""
    return list(dict.fromkeys(name.strip() for name in listed.split(",") if name.strip()))


COMPARE_USAGE = "Usage: /compare [--models a,b] PROMPT, or /compare --layers a,b for their layers side by side"
_COMPARE_FLAG = re.compile(r"--(?P<flag>models|layers)(?=\s|$)\s*(?P<value>(?!--)\S+)?\s*")


def _compare_flags(args: str) -> tuple[dict[str, str], str]:
    """'--models a,b --layers c,d rest' (flags first, any order, as Discord's typed options
    arrive) -> ({'models': 'a,b', 'layers': 'c,d'}, 'rest')."""
    flags: dict[str, str] = {}
    rest = args.strip()
    while (match := _COMPARE_FLAG.match(rest)) is not None:
        flags[match["flag"]] = match["value"] or ""
        rest = rest[match.end():]
    return flags, rest.strip()


def _report_line(report) -> str:
    """'`smollm2` · 134.5M parameters · 538.1 MB · 33 blocks · bfloat16 · cpu' for /compare --layers."""
    from bot.inspect import human_count
    from bot.text import human_bytes

    return (f"`{report.model_name}` · {human_count(report.total_params)} parameters · "
            f"{human_bytes(report.footprint_bytes)} · {len(report.blocks)} blocks · {report.dtype} · {report.device}")


async def _picture(reports: list) -> bytes:
    """The layers PNG, drawn off the event loop (matplotlib takes a moment, longer the first time)."""
    from bot.layers_picture import render_layers_png

    return await asyncio.to_thread(render_layers_png, reports)
