"""Llama 3.x and SmolLM2 (config model_type "llama").

Llama 3.1+ templates always write a system header with "Cutting Knowledge Date" and
"Today Date"; the date comes from the `date_string` variable, which we set to today
(the template's own default is frozen at "26 Jul 2024"). SmolLM2 is ChatML and ignores it.
"""

from __future__ import annotations

import datetime
from typing import Any

from bot.backend import FamilyBackend
from bot.hookspecs import hookimpl

# Month names spelled out here: strftime("%b") follows the process locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Meta's Llama 3.1 Instruct template (tokenizer_config.json) without its tool-calling
# branches, which the bot never uses: plain chat renders exactly as the official one.
LLAMA_3_1_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""


def today_string(today: datetime.date | None = None) -> str:
    """A date the way Llama 3.1's template writes it: "26 Jul 2024"."""
    today = today or datetime.date.today()
    return f"{today.day:02d} {_MONTHS[today.month - 1]} {today.year}"


class LlamaBackend(FamilyBackend):
    name = "llama"
    model_types = ("llama",)
    name_patterns = (r"llama", r"smollm")
    # Llama 3.x: <|eot_id|> ends a turn, <|eom_id|> a tool-call message, <|end_of_text|> the
    # document. SmolLM2 (ChatML) ends turns with <|im_end|>. Only those in the vocab count.
    turn_end_tokens = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>")
    # Meta's generation_config.json for Llama 3.x Instruct.
    generation_defaults = {**FamilyBackend.generation_defaults, "temperature": 0.6, "top_p": 0.9}

    def fallback_chat_template(self, model_type: str | None) -> str | None:
        return LLAMA_3_1_TEMPLATE

    def template_kwargs(self, model_type: str | None) -> dict[str, Any]:
        return {"date_string": today_string()}


@hookimpl
def register_backends(register):
    register(LlamaBackend())
