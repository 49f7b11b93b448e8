"""Mistral 7B Instruct v0.1, v0.2 and v0.3 (config model_type "mistral").

All versions want strict user/assistant alternation starting with a user turn. The early
templates have no system role (v0.2's raises on one), so there the system text is folded
into the first user turn; v0.3's template places a system message itself (into the last
user turn), so when a template handles "system" we leave the message to it.
"""

from __future__ import annotations

from bot.backend import FamilyBackend, drop_leading_assistant_turns
from bot.hookspecs import hookimpl

# mistralai/Mistral-7B-Instruct-v0.3, tokenizer_config.json, without its tool-calling
# branches (the bot sends no tools): plain chat renders exactly as the official one.
MISTRAL_V3_TEMPLATE = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""


class MistralBackend(FamilyBackend):
    name = "mistral"
    model_types = ("mistral",)
    name_patterns = (r"mistral",)
    turn_end_tokens = ("</s>",)

    def normalize_messages(self, messages: list[dict], model_type: str | None) -> list[dict]:
        merged = drop_leading_assistant_turns(super().normalize_messages(messages, model_type))
        # The templates accept one system message, first: gather all system text there.
        # (Templates without a system role get it folded into the first user turn by the base.)
        system = "\n\n".join(m["content"] for m in merged if m["role"] == "system")
        head = [{"role": "system", "content": system}] if system else []
        # Merging again joins turns that met where a system turn left, so they alternate.
        return super().normalize_messages(head + [m for m in merged if m["role"] != "system"], model_type)

    def fallback_chat_template(self, model_type: str | None) -> str | None:
        return MISTRAL_V3_TEMPLATE


@hookimpl
def register_backends(register):
    register(MistralBackend())
