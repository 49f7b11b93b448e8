"""The `discord:` config section -> typed settings; environment variables override the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.config import ConfigError
from bot.frontends.section import flag, model_switch, read_section, seconds, who_may, whole_number

DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY = "wss://gateway.discord.gg/"
_ENV_OVERRIDES = {"token": "DISCORD_TOKEN", "api_base": "DISCORD_API_BASE", "gateway_url": "DISCORD_GATEWAY_URL"}


@dataclass(frozen=True)
class DiscordSettings:
    enabled: bool = False
    token: str = ""
    api_base: str = DEFAULT_API_BASE
    gateway_url: str = DEFAULT_GATEWAY
    guilds: tuple[int, ...] = ()  # slash commands sync to these guilds (instant); empty: global
    channels: tuple[int, ...] = ()  # answer only here (and in their threads); empty: everywhere
    admins: frozenset[int] = field(default_factory=frozenset)  # user or role ids
    model_switch: str = "everyone"  # everyone | admins
    compare: str = "everyone"  # everyone | admins: who may run /compare (it loads every model in turn)
    settings_change: str = "everyone"  # everyone | admins: who may change a channel's /settings
    allow_dms: bool = False
    edit_interval: float = 1.0  # seconds between edits of a streamed reply
    message_limit: int = 2000  # Discord's; lower only to test splitting
    # Discord's per-channel bucket for message writes (create and edit): every answer in a
    # channel shares it, so that many answers at once never run into 429s
    writes_per_channel: int = 5
    write_window: float = 5.0


def parse_discord_settings(section: dict[str, Any]) -> DiscordSettings:
    known = {"enabled", "token", "api_base", "gateway_url", "guilds", "channels", "admins", "model_switch",
             "compare", "settings_change", "allow_dms", "edit_interval", "message_limit", "writes_per_channel",
             "write_window"}
    raw = read_section("discord", section, _ENV_OVERRIDES, known)
    settings = DiscordSettings(
        enabled=flag(raw.get("enabled", False)),
        token=str(raw.get("token") or ""),
        api_base=str(raw.get("api_base") or DEFAULT_API_BASE).rstrip("/"),
        gateway_url=str(raw.get("gateway_url") or DEFAULT_GATEWAY),
        guilds=_ids(raw.get("guilds"), "guilds"),
        channels=_ids(raw.get("channels"), "channels"),
        admins=frozenset(_ids(raw.get("admins"), "admins")),
        model_switch=model_switch(raw, "discord"),
        compare=who_may(raw, "discord", "compare"),
        settings_change=who_may(raw, "discord", "settings_change"),
        allow_dms=flag(raw.get("allow_dms", False)),
        edit_interval=seconds(raw, "discord", "edit_interval", 1.0),
        message_limit=whole_number(raw, "discord", "message_limit", 2000, 100, 2000),
        writes_per_channel=whole_number(raw, "discord", "writes_per_channel", 5, 1, 1000),
        write_window=seconds(raw, "discord", "write_window", 5.0),
    )
    if settings.write_window <= 0:
        raise ConfigError("discord.write_window: must be a number of seconds > 0")
    return settings


def check_ready(settings: DiscordSettings) -> None:
    """What `modelbot run discord` needs beyond the section, said before anything connects."""
    if not settings.token:
        raise ConfigError("discord.token: empty; set DISCORD_TOKEN in the environment (the bot's token from the "
                          "Discord developer portal)")


def _ids(value: Any, key: str) -> tuple[int, ...]:
    if value in (None, "", []):
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        return tuple(int(str(item).strip()) for item in items if str(item).strip())
    except ValueError:
        raise ConfigError(f"discord.{key}: must be a list of numeric Discord ids (got {value!r})") from None
