"""The bot's commands, in one table: the console's /help, Discord's application commands,
Slack's slash commands and docs/slack-manifest.yaml are all derived from it (a test checks
the manifest). The handlers live in bot/commands.py, one method per name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str
    description: str
    required: bool = False
    model_name: bool = False  # a configured model's name: platforms offer autocompletion
    flag: bool = False  # written `--name VALUE` before the other arguments
    choices: tuple[str, ...] = ()  # the values platforms offer as autocompletion


@dataclass(frozen=True)
class CommandSpec:
    name: str
    summary: str  # one line, at most 100 characters (Discord's limit for descriptions)
    usage: str = ""  # the arguments as typed: /help and Slack's usage hint
    options: tuple[Option, ...] = ()  # the arguments as Discord's typed options
    private: bool = False  # answered to the asker only where the platform can (ephemeral)
    switches_model: bool = False  # with arguments it changes the channel's model (model_switch: admins)
    changes_settings: bool = False  # with arguments it changes the channel's settings (settings_change: admins)
    host_history: bool = False  # acts on history the host keeps: offered only where it keeps one

    def as_text(self, values: dict[str, str | None]) -> str:
        """Discord's typed options -> the command as typed: '/compare --models a,b What is 2+2?'."""
        words = [f"/{self.name}"]
        words += [f"--{o.name} {values[o.name]}" for o in self.options if o.flag and values.get(o.name)]
        words += [str(values[o.name]) for o in self.options if not o.flag and values.get(o.name)]
        return " ".join(words)


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("model", "Show or switch this channel's model", "[NAME]",
                (Option("name", "the model to use in this channel", model_name=True),), switches_model=True),
    CommandSpec("models", "The configured models, their plugin, source, quantization and whether loaded"),
    CommandSpec("layers", "A model's layers, parameter counts, 4-bit layers and memory footprint", "[NAME]",
                (Option("name", "the model (default: this channel's)", model_name=True),)),
    CommandSpec("compare", "Run a prompt through several models one after another, or draw their layers side by side",
                "[--models a,b] PROMPT | --layers a,b",
                (Option("prompt", "what to ask (leave it out with layers)"),
                 Option("models", "comma-separated model names (default: all)", flag=True),
                 Option("layers", "2-3 comma-separated model names: their layers side by side in a picture, "
                                  "no prompt", flag=True))),
    CommandSpec("settings", "Show or change this channel's persona, temperature, top_p, reply and history length",
                "[NAME VALUE | reset [NAME]]",
                (Option("name", "the setting, or reset", choices=("system", "temperature", "top_p", "max_new_tokens",
                                                                  "history", "reset")),
                 Option("value", "the new value (after reset: the setting to reset)")),
                changes_settings=True),
    CommandSpec("stop", "Stop the reply being generated in this channel"),
    CommandSpec("stats", "Loaded models and their memory, the queue, recent speed", private=True),
    CommandSpec("help", "What the bot can do, and its commands", private=True),
    CommandSpec("reset", "Forget this channel's conversation", host_history=True),
)

BY_NAME = {spec.name: spec for spec in COMMANDS}


def offered(host_keeps_history: bool) -> tuple[CommandSpec, ...]:
    """The commands a frontend offers. /reset only where the host keeps the conversation: on
    Discord and Slack a conversation is the reply chain or thread, which it cannot forget."""
    return tuple(spec for spec in COMMANDS if host_keeps_history or not spec.host_history)
