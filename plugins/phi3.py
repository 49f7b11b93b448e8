"""Phi-3 and Phi-3.5 (config model_type "phi3").

The first Phi-3-mini-4k-instruct template (2024-05) has no system role at all: it silently
drops system messages. When a template never mentions "system" we fold the system text into
the first user turn instead of losing it; Phi-3.5 (and the later Phi-3 revisions) have a
system role and keep it.
"""

from __future__ import annotations

from bot.backend import FamilyBackend
from bot.hookspecs import hookimpl

# microsoft/Phi-3.5-mini-instruct, tokenizer_config.json.
PHI_3_5_TEMPLATE = (
    r"{% for message in messages %}"
    r"{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% endif %}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


class Phi3Backend(FamilyBackend):
    name = "phi3"
    model_types = ("phi3",)
    name_patterns = (r"phi-?3",)
    # <|end|> closes every turn and must stop generation, or the model writes the next
    # <|user|> turn itself; <|endoftext|> and <|assistant|> are in the official eos list too.
    turn_end_tokens = ("<|end|>", "<|endoftext|>", "<|assistant|>")

    def fallback_chat_template(self, model_type: str | None) -> str | None:
        return PHI_3_5_TEMPLATE


@hookimpl
def register_backends(register):
    register(Phi3Backend())
