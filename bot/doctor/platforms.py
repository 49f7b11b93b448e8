"""The Discord token and its Message Content intent; the Slack token and its scopes against
docs/slack-manifest.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.config import ConfigError
from bot.doctor.report import Check, FAIL, get_json, network_reason, OK, WARN

# Discord application flags: the portal's Message Content switch (verified / unverified apps)
GATEWAY_MESSAGE_CONTENT, GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 18, 1 << 19
SLACK_MANIFEST = Path(__file__).resolve().parents[2] / "docs" / "slack-manifest.yaml"

# -- Discord ------------------------------------------------------------------------------------

async def discord_checks(session: Any, section: dict) -> list[Check]:
    from bot.frontends.discord_settings import parse_discord_settings

    try:
        settings = parse_discord_settings(section)
    except ConfigError as exc:
        return [Check(FAIL, "discord", f"config error: {exc}", "fix the discord: section")]
    if not settings.enabled and not settings.token:
        return [Check(OK, "discord", "not enabled")]
    if not settings.token:
        return [Check(FAIL, "discord token", "empty",
                      "copy the bot's token (developer portal → Bot → Reset Token) into DISCORD_TOKEN")]
    headers = {"Authorization": f"Bot {settings.token}"}
    try:
        status, user = await get_json(session, f"{settings.api_base}/users/@me", headers)
        if status == 401:
            return [Check(FAIL, "discord token", "Discord refused it (401 Unauthorized)",
                          "the token is wrong: reset it in the developer portal (Bot → Reset Token) and set DISCORD_TOKEN")]
        if status != 200:
            return [Check(FAIL, "discord token", f"GET /users/@me answered {status}",
                          f"check discord.api_base ({settings.api_base}) and Discord's status page")]
        found = [Check(OK, "discord token", f"valid: bot {user.get('username')} ({user.get('id')})")]
        status, application = await get_json(session, f"{settings.api_base}/applications/@me", headers)
    except Exception as exc:  # noqa: BLE001 - network errors, one line
        return [Check(FAIL, "discord", f"cannot reach {settings.api_base} ({network_reason(exc)})",
                      "check the network and discord.api_base")]
    if status != 200:
        found.append(Check(FAIL, "discord message content intent", f"GET /applications/@me answered {status}",
                           "check discord.api_base"))
    elif int(application.get("flags") or 0) & (GATEWAY_MESSAGE_CONTENT | GATEWAY_MESSAGE_CONTENT_LIMITED):
        found.append(Check(OK, "discord message content intent", "enabled"))
    else:
        found.append(Check(FAIL, "discord message content intent", "off: the bot would see mentions without their text",
                           "developer portal → your application → Bot → Privileged Gateway Intents: turn on "
                           "Message Content Intent"))
    return found


# -- Slack --------------------------------------------------------------------------------------

async def slack_checks(session: Any, section: dict) -> list[Check]:
    from bot.frontends.slack_settings import check_credentials, parse_slack_settings

    try:
        settings = parse_slack_settings(section)
    except ConfigError as exc:
        return [Check(FAIL, "slack", f"config error: {exc}", "fix the slack: section")]
    if not settings.enabled and not settings.bot_token:
        return [Check(OK, "slack", "not enabled")]
    found = []
    if settings.enabled:
        try:
            check_credentials(settings)
        except ConfigError as exc:
            found.append(Check(FAIL, "slack credentials", str(exc), "set them in the environment, never in the file"))
    if not settings.bot_token:
        return found
    try:
        async with session.post(f"{settings.api_base}auth.test",
                                headers={"Authorization": f"Bearer {settings.bot_token}"}) as response:
            body = await response.json(content_type=None) if response.status == 200 else {}
            granted = response.headers.get("x-oauth-scopes")
            status = response.status
    except Exception as exc:  # noqa: BLE001 - network errors, one line
        return [*found, Check(FAIL, "slack", f"cannot reach {settings.api_base} ({network_reason(exc)})",
                              "check the network and slack.api_base")]
    if status != 200 or not isinstance(body, dict):
        return [*found, Check(FAIL, "slack token", f"auth.test answered HTTP {status}", "check slack.api_base")]
    if not body.get("ok"):
        return [*found, Check(FAIL, "slack token", f"Slack refused it ({body.get('error')})",
                              "the token is wrong: copy the Bot User OAuth Token (xoxb-…) from OAuth & Permissions "
                              "and set SLACK_BOT_TOKEN")]
    found.append(Check(OK, "slack token", f"valid: bot {body.get('user')} in {body.get('team')}"))
    return found + _scope_checks(granted)


def _scope_checks(granted: str | None) -> list[Check]:
    try:
        wanted = manifest_bot_scopes()
    except (OSError, ValueError) as exc:
        return [Check(WARN, "slack scopes", f"not compared: {exc}", "compare them with docs/slack-manifest.yaml by hand")]
    if granted is None:
        return [Check(WARN, "slack scopes", "Slack did not report the token's scopes (no x-oauth-scopes header)",
                      f"compare them by hand with {', '.join(wanted)}")]
    have = {scope.strip() for scope in granted.split(",") if scope.strip()}
    missing = [scope for scope in wanted if scope not in have]
    if not missing:
        return [Check(OK, "slack scopes", f"all {len(wanted)} the manifest asks for")]
    return [Check(FAIL, f"slack scope {scope}", "missing from the bot token",
                  f"add {scope} under OAuth & Permissions → Bot Token Scopes (or paste docs/slack-manifest.yaml), "
                  "then reinstall the app after adding it")
            for scope in missing]


def manifest_bot_scopes(path: Path = SLACK_MANIFEST) -> list[str]:
    import yaml

    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        scopes = manifest["oauth_config"]["scopes"]["bot"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} has no oauth_config.scopes.bot") from None
    return [str(scope) for scope in scopes]


