"""Reading a frontend's config section (`discord:`, `slack:`): environment variables override
the file, unknown keys are errors, and every error names its key."""

from __future__ import annotations

import math
import os
from typing import Any

from bot.config import ConfigError


def read_section(name: str, section: dict[str, Any] | None, env: dict[str, str], known: set[str]) -> dict[str, Any]:
    """The section with `env` (key -> variable) applied; a typo'd key is an error, not ignored."""
    raw = dict(section or {})
    for key, variable in env.items():
        if os.environ.get(variable):
            raw[key] = os.environ[variable]
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    return raw


def flag(value: Any) -> bool:
    """`enabled: ${SLACK_ENABLED:-false}` arrives as a string."""
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


def who_may(raw: dict[str, Any], name: str, key: str) -> str:
    """`everyone` or `admins`: who may use a command (model_switch, compare)."""
    value = str(raw.get(key, "everyone")).lower()
    if value not in ("everyone", "admins"):
        raise ConfigError(f"{name}.{key}: must be everyone or admins (got {value!r})")
    return value


def model_switch(raw: dict[str, Any], name: str) -> str:
    return who_may(raw, name, "model_switch")


def seconds(raw: dict[str, Any], name: str, key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{name}.{key}: must be a number of seconds >= 0 (got {value!r})")  # nan/inf too
    return float(value)


def whole_number(raw: dict[str, Any], name: str, key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # from an environment variable
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}.{key}: must be a whole number from {low} to {high} (got {value!r})")
    return value
