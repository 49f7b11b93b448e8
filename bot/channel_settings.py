"""A channel's own settings (`/settings`): its system prompt (persona), sampling, reply length
and how much of the conversation the model sees; kept in the sqlite store, so they survive
restarts, and applied to whatever model the channel uses.

Each setting is parsed and range-checked here, so a bad value is one clear message naming
the setting and its range; unset settings are the model's own (its config entry, else its
family's defaults).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from bot.errors import UserFacingError
from bot.store import Store
from bot.text import text_table

KEY_PREFIX = "setting."
MAX_SYSTEM_CHARS = 4000
MAX_HISTORY = 200


class BadSetting(UserFacingError):
    """A /settings value out of range, or an unknown setting; str() says which and the range."""


@dataclass(frozen=True)
class SettingSpec:
    name: str
    what: str  # for /settings and /help
    range: str  # said when a value is refused
    parse: Callable[[str, int], Any]  # text (and the reply-length cap) -> value, or ValueError


def _number(low: float, high: float, *, low_open: bool = False) -> Callable[[str, int], float]:
    def parse(text: str, _cap: int) -> float:
        value = float(text)
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise ValueError(text)
        return value

    return parse


def _whole(low: int, high: int | None = None) -> Callable[[str, int], int]:
    def parse(text: str, cap: int) -> int:
        value = int(text)
        if value < low or value > (cap if high is None else high):
            raise ValueError(text)
        return value

    return parse


def _system(text: str, _cap: int) -> str:
    text = text.strip()
    if not text or len(text) > MAX_SYSTEM_CHARS:
        raise ValueError(text)
    return text


SPECS: dict[str, SettingSpec] = {spec.name: spec for spec in (
    SettingSpec("system", "the system prompt: who the model is and how it answers",
                f"some text, at most {MAX_SYSTEM_CHARS} characters", _system),
    SettingSpec("temperature", "sampling temperature: higher is more varied",
                "a number above 0, at most 2 (e.g. 0.7)", _number(0.0, 2.0, low_open=True)),
    SettingSpec("top_p", "nucleus sampling: the share of likely tokens sampled from",
                "a number above 0, at most 1 (e.g. 0.9)", _number(0.0, 1.0, low_open=True)),
    SettingSpec("max_new_tokens", "the longest reply, in tokens", "a whole number from 1 to {cap}", _whole(1)),
    SettingSpec("history", "how many earlier messages of the conversation the model sees",
                f"a whole number from 0 to {MAX_HISTORY} (0: each message on its own)", _whole(0, MAX_HISTORY)),
)}
ALIASES = {"persona": "system", "system_prompt": "system", "prompt": "system", "top-p": "top_p",
           "max_tokens": "max_new_tokens", "length": "max_new_tokens", "temp": "temperature"}
SAMPLING = ("temperature", "top_p")


@dataclass(frozen=True)
class ChannelSettings:
    """What a channel changed; None: the model's own."""

    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    history: int | None = None

    def changed(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def generation_overrides(self) -> dict[str, Any]:
        """For the engine: a channel that sets its sampling samples, whatever the model's default."""
        overrides = {name: value for name, value in self.changed().items() if name in (*SAMPLING, "max_new_tokens")}
        if any(name in overrides for name in SAMPLING):
            overrides["do_sample"] = True
        return overrides

    def with_system(self, messages: list[dict]) -> list[dict]:
        """The channel's system prompt replaces the model's (the family's rules still apply:
        Gemma folds it into the first user turn)."""
        if self.system is None:
            return messages
        return [{"role": "system", "content": self.system}, *(m for m in messages if m["role"] != "system")]

    def trimmed_history(self, history: list[dict]) -> list[dict]:
        """The last `history` messages, starting on a user turn as templates require."""
        if self.history is None:
            return history
        kept = history[-self.history:] if self.history else []
        while kept and kept[0]["role"] != "user":
            kept = kept[1:]
        return kept

    def differing(self, defaults: dict[str, Any]) -> list[str]:
        """Footer parts for what differs from the model's defaults: 'temperature 1.2', 'custom persona'."""
        parts = []
        for name, value in self.changed().items():
            if name == "system":
                if value != defaults.get("system"):
                    parts.append("custom persona")
            elif name == "history":
                parts.append(f"history {value}")
            elif value != defaults.get(name):
                parts.append(f"{name} {shown_value(value)}")
        return parts


def canonical(name: str) -> str:
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    if name not in SPECS:
        raise BadSetting(f"there is no setting {name!r}; the settings are: {', '.join(SPECS)}")
    return name


def parse_value(name: str, text: str, reply_cap: int) -> Any:
    spec = SPECS[name]
    try:
        return spec.parse(text, reply_cap)
    except ValueError:
        raise BadSetting(f"{name} must be {spec.range.format(cap=reply_cap)} (got {_quoted(text)})") from None


def _quoted(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 40 else text[:39] + "…") if text else "nothing"


def shown_value(value: Any) -> str:
    """1.2 -> '1.2', 512 -> '512'."""
    return f"{value:g}" if isinstance(value, float) else str(value)


class ChannelSettingsStore:
    """The channels' settings in the sqlite store, one row per channel and setting."""

    def __init__(self, store: Store):
        self.store = store

    def get(self, channel: str) -> ChannelSettings:
        values: dict[str, Any] = {}
        for name in SPECS:
            raw = self.store.get(channel, KEY_PREFIX + name)
            if raw is not None:
                try:
                    values[name] = json.loads(raw)
                except ValueError:
                    continue  # an unreadable row: the model's own value
        return replace(ChannelSettings(), **values)

    def set(self, channel: str, name: str, value: Any) -> None:
        self.store.set(channel, KEY_PREFIX + name, json.dumps(value))

    def reset(self, channel: str, name: str | None = None) -> None:
        for each in [name] if name else list(SPECS):
            self.store.delete(channel, KEY_PREFIX + each)


def format_settings(model: str, chosen: ChannelSettings, defaults: dict[str, Any], reply_cap: int) -> str:
    """/settings: each setting's value here and the model's own; `*` marks this channel's."""
    sampling = defaults.get("do_sample", False)

    def default_of(name: str) -> str:
        if name == "system":
            return _short(defaults.get("system")) if defaults.get("system") else "(the template's own)"
        if name == "history":
            return "all that fits"
        if name in SAMPLING and not sampling:
            return "greedy (do_sample: false)"
        value = defaults.get(name)
        return "-" if value is None else shown_value(value)

    rows = [("setting", "this channel", "the model's")]
    for name in SPECS:
        value = getattr(chosen, name)
        here = "" if value is None else (_short(value) if name == "system" else shown_value(value)) + " *"
        rows.append((name, here, default_of(name)))
    lines = [f"Settings in this channel (model {model}); `*` = set here:", f"```\n{text_table(rows)}\n```"]
    if chosen.system:
        lines.append(f"System prompt here: {chosen.system}")
    lines.append(f"Change one with /settings NAME VALUE (max_new_tokens up to {reply_cap}); "
                 "/settings reset [NAME] returns to the model's.")
    return "\n".join(lines)


def _short(text: str | None, limit: int = 40) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
