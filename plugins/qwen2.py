"""Qwen2 and Qwen2.5 (config model_type "qwen2").

ChatML. The templates add their own default system prompt when the conversation has none,
so nothing needs normalising beyond what the base class does.
"""

from __future__ import annotations

from bot.backend import FamilyBackend
from bot.hookspecs import hookimpl

# Qwen/Qwen2-7B-Instruct, tokenizer_config.json.
QWEN2_TEMPLATE = (
    r"{% for message in messages %}"
    r"{% if loop.first and messages[0]['role'] != 'system' %}"
    r"{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    r"{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Qwen2Backend(FamilyBackend):
    name = "qwen2"
    model_types = ("qwen2",)
    name_patterns = (r"qwen2",)
    # <|im_end|> ends a turn, <|endoftext|> the document; ids differ between releases'
    # tokenizers in principle, so they are read from the vocab.
    turn_end_tokens = ("<|im_end|>", "<|endoftext|>")
    # Qwen's generation_config.json for the Instruct models.
    generation_defaults = {
        **FamilyBackend.generation_defaults,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "repetition_penalty": 1.05,
    }

    def fallback_chat_template(self, model_type: str | None) -> str | None:
        return QWEN2_TEMPLATE


@hookimpl
def register_backends(register):
    register(Qwen2Backend())
