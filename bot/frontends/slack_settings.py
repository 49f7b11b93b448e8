"""The `slack:` config section -> typed settings; environment variables override the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.config import ConfigError
from bot.frontends.section import flag, model_switch, read_section, seconds, who_may, whole_number

DEFAULT_API_BASE = "https://slack.com/api/"
_ENV_OVERRIDES = {"bot_token": "SLACK_BOT_TOKEN", "app_token": "SLACK_APP_TOKEN",
                  "signing_secret": "SLACK_SIGNING_SECRET", "api_base": "SLACK_API_BASE", "port": "SLACK_PORT"}
_KNOWN = {"enabled", "mode", "bot_token", "app_token", "signing_secret", "api_base", "host", "port", "path",
          "channels", "admins", "model_switch", "compare", "settings_change", "edit_interval", "message_limit",
          "rate_limit_retries",
          "edits_per_minute", "allow_dms", "streaming", "stream_starts_per_minute", "stream_appends_per_minute"}


@dataclass(frozen=True)
class SlackSettings:
    enabled: bool = False
    mode: str = "socket"  # socket (app-level token, no public URL) | http (Events API on a port)
    bot_token: str = ""  # xoxb-…
    app_token: str = ""  # xapp-…, Socket Mode only
    signing_secret: str = ""  # HTTP mode only
    api_base: str = DEFAULT_API_BASE  # GovSlack: https://slack-gov.com/api/
    host: str = "0.0.0.0"  # HTTP mode: where requests are served (signatures are verified)
    port: int = 3000  # HTTP mode
    path: str = "/slack/events"  # HTTP mode: Events API and slash commands both come here
    channels: tuple[str, ...] = ()  # answer only here; empty: every channel the app is in
    admins: frozenset[str] = field(default_factory=frozenset)  # user ids (U…)
    model_switch: str = "everyone"  # everyone | admins
    compare: str = "everyone"  # everyone | admins: who may run /compare (it loads every model in turn)
    settings_change: str = "everyone"  # everyone | admins: who may change a channel's /settings
    edit_interval: float = 1.5  # chat.update is Tier 3 (~50/min): one edit per 1.5 s per message
    message_limit: int = 3500  # a streamed message continues in a new one past this
    rate_limit_retries: int = 5  # 429s waited out (Retry-After) before giving up
    edits_per_minute: int = 50  # chat.update budget shared by every growing answer (Tier 3: 50+/min)
    allow_dms: bool = True  # answer direct messages and the assistant view
    streaming: bool = True  # chat.startStream/appendStream/stopStream where the workspace has them (auto)
    stream_starts_per_minute: int = 50  # chat.startStream and chat.stopStream, each
    stream_appends_per_minute: int = 100  # chat.appendStream (Tier 4)


def parse_slack_settings(section: dict[str, Any]) -> SlackSettings:
    raw = read_section("slack", section, _ENV_OVERRIDES, _KNOWN)
    mode = str(raw.get("mode") or "socket").lower()
    if mode not in ("socket", "http"):
        raise ConfigError(f"slack.mode: must be socket or http (got {mode!r})")
    api_base = str(raw.get("api_base") or DEFAULT_API_BASE)
    path = str(raw.get("path") or "/slack/events")
    return SlackSettings(
        enabled=flag(raw.get("enabled", False)),
        mode=mode,
        bot_token=str(raw.get("bot_token") or ""),
        app_token=str(raw.get("app_token") or ""),
        signing_secret=str(raw.get("signing_secret") or ""),
        api_base=api_base if api_base.endswith("/") else api_base + "/",  # slack_sdk joins with the method
        host=str(raw.get("host") or "0.0.0.0"),
        port=whole_number(raw, "slack", "port", 3000, 0, 65535),
        path=path if path.startswith("/") else "/" + path,
        channels=_ids(raw.get("channels"), "channels"),
        admins=frozenset(_ids(raw.get("admins"), "admins")),
        model_switch=model_switch(raw, "slack"),
        compare=who_may(raw, "slack", "compare"),
        settings_change=who_may(raw, "slack", "settings_change"),
        edit_interval=seconds(raw, "slack", "edit_interval", 1.5),
        message_limit=whole_number(raw, "slack", "message_limit", 3500, 100, 3900),
        rate_limit_retries=whole_number(raw, "slack", "rate_limit_retries", 5, 0, 100),
        edits_per_minute=whole_number(raw, "slack", "edits_per_minute", 50, 1, 6000),
        allow_dms=flag(raw.get("allow_dms", True)),
        streaming=_streaming(raw.get("streaming", "auto")),
        stream_starts_per_minute=whole_number(raw, "slack", "stream_starts_per_minute", 50, 1, 6000),
        stream_appends_per_minute=whole_number(raw, "slack", "stream_appends_per_minute", 100, 1, 6000),
    )


def _streaming(value) -> bool:
    text = str(value).strip().lower()
    if text not in ("auto", "off", "true", "false"):
        raise ConfigError(f"slack.streaming: must be auto or off (got {value!r})")
    return text in ("auto", "true")


def check_credentials(settings: SlackSettings) -> None:
    """What the chosen mode needs, said before anything connects."""
    missing = [("bot_token", "SLACK_BOT_TOKEN", "the Bot User OAuth Token, xoxb-…")] if not settings.bot_token else []
    if settings.mode == "socket" and not settings.app_token:
        missing.append(("app_token", "SLACK_APP_TOKEN", "an app-level token with connections:write, xapp-…"))
    if settings.mode == "http" and not settings.signing_secret:
        missing.append(("signing_secret", "SLACK_SIGNING_SECRET", "Basic Information → Signing Secret"))
    if missing:
        raise ConfigError("; ".join(f"slack.{key}: empty; set {variable} in the environment ({what})"
                                    for key, variable, what in missing))
    if settings.mode == "socket" and not settings.app_token.startswith("xapp-"):
        raise ConfigError("slack.app_token: Socket Mode needs an app-level token (xapp-…), "
                          "not a bot token; create one under Basic Information → App-Level Tokens")


def _ids(value: Any, key: str) -> tuple[str, ...]:
    if value in (None, "", []):
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    ids = tuple(str(item).strip() for item in items if str(item).strip())
    if any(not item.isalnum() or not item[0].isalpha() for item in ids):
        raise ConfigError(f"slack.{key}: must be Slack ids such as C0123ABCD or U0123ABCD, not names (got {value!r})")
    return ids
