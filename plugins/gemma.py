"""Gemma 1, 2 and 3 (config model_type "gemma", "gemma2", "gemma3", "gemma3_text").

Gemma templates know only "user" and "model" turns: Gemma 1/2 raise on a system message
and on any break in strict user/model alternation, Gemma 3 folds the system text into the
first user turn itself. We normalise for all of them the Gemma 3 way: system text folded
into the first user turn, the conversation starting with a user turn and alternating.
"""

from __future__ import annotations

from typing import Any

from bot.backend import FamilyBackend, drop_leading_assistant_turns, fold_system_into_first_user
from bot.hookspecs import hookimpl

# google/gemma-7b-it and google/gemma-2-*-it, tokenizer_config.json.
GEMMA_TEMPLATE = (
    r"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    r"{% for message in messages %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    r"{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    r"{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# google/gemma-3-*-it, tokenizer_config.json (the Gemma 3 270M GGUF ships no template).
GEMMA_3_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


class GemmaBackend(FamilyBackend):
    name = "gemma"
    model_types = ("gemma", "gemma2", "gemma3", "gemma3_text")
    name_patterns = (r"gemma",)
    # <end_of_turn> is 107 in Gemma 1/2 and 106 in Gemma 3: read from the vocab, never hard-coded.
    turn_end_tokens = ("<end_of_turn>", "<eos>")

    def normalize_messages(self, messages: list[dict], model_type: str | None) -> list[dict]:
        merged = drop_leading_assistant_turns(super().normalize_messages(messages, model_type))
        # Every Gemma template mentions "system" (1/2 only to reject it), so fold here.
        # Folding can leave two user turns side by side: merging again restores alternation.
        return super().normalize_messages(fold_system_into_first_user(merged), model_type)

    def fallback_chat_template(self, model_type: str | None) -> str | None:
        return GEMMA_3_TEMPLATE if model_type in ("gemma3", "gemma3_text") else GEMMA_TEMPLATE

    def load_kwargs(self, quantization: str, device: str, model_type: str | None = None) -> dict[str, Any]:
        # Gemma 2 soft-caps attention logits, which only the eager attention implements.
        return {"attn_implementation": "eager"} if model_type == "gemma2" else {}


@hookimpl
def register_backends(register):
    register(GemmaBackend())
