"""The `discord:` config section -> typed settings; environment variables override the file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from bot.config import ConfigError

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
    allow_dms: bool = False
    edit_interval: float = 1.0  # seconds between edits of a streamed reply
    message_limit: int = 2000  # Discord's; lower only to test splitting


def parse_discord_settings(section: dict[str, Any]) -> DiscordSettings:
    raw = dict(section or {})
    for key, variable in _ENV_OVERRIDES.items():
        if os.environ.get(variable):
            raw[key] = os.environ[variable]
    known = {"enabled", "token", "api_base", "gateway_url", "guilds", "channels", "admins", "model_switch",
             "allow_dms", "edit_interval", "message_limit"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"discord.{key}: unknown key (known: {', '.join(sorted(known))})")
    model_switch = str(raw.get("model_switch", "everyone")).lower()
    if model_switch not in ("everyone", "admins"):
        raise ConfigError(f"discord.model_switch: must be everyone or admins (got {model_switch!r})")
    interval = raw.get("edit_interval", 1.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise ConfigError(f"discord.edit_interval: must be a number of seconds >= 0 (got {interval!r})")
    limit = raw.get("message_limit", 2000)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 100 <= limit <= 2000:
        raise ConfigError(f"discord.message_limit: must be a whole number from 100 to 2000 (got {limit!r})")
    settings = DiscordSettings(
        enabled=bool(raw.get("enabled", False)),
        token=str(raw.get("token") or ""),
        api_base=str(raw.get("api_base") or DEFAULT_API_BASE).rstrip("/"),
        gateway_url=str(raw.get("gateway_url") or DEFAULT_GATEWAY),
        guilds=_ids(raw.get("guilds"), "guilds"),
        channels=_ids(raw.get("channels"), "channels"),
        admins=frozenset(_ids(raw.get("admins"), "admins")),
        model_switch=model_switch,
        allow_dms=bool(raw.get("allow_dms", False)),
        edit_interval=float(interval),
        message_limit=limit,
    )
    return settings


def _ids(value: Any, key: str) -> tuple[int, ...]:
    if value in (None, "", []):
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        return tuple(int(str(item).strip()) for item in items if str(item).strip())
    except ValueError:
        raise ConfigError(f"discord.{key}: must be a list of numeric Discord ids (got {value!r})") from None
