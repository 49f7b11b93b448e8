"""bot.inspect on real models: a tiny random Llama loaded in fp32 and in NF4 on CPU, and
Llama-3.1-8B-shaped models built on the meta device (no weights allocated)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from bot.inspect import SUMMARY_LIMIT, human_bytes, human_count, inspect_model

TINY_LAYERS = 4
LINEARS_PER_LAYER = 7  # q k v o gate up down
LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Llama-3.1-8B's published shape; its parameter count is 8,030,261,248.
LLAMA_31_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
LLAMA_31_8B_PARAMS = 8_030_261_248


def _tiny_config(**overrides) -> LlamaConfig:
    values = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def _nf4_config() -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(_tiny_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_models(tiny_checkpoint):
    """The same saved checkpoint loaded twice: plain fp32 and NF4 4-bit."""
    fp32 = LlamaForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    nf4 = LlamaForCausalLM.from_pretrained(tiny_checkpoint, quantization_config=_nf4_config())
    return fp32, nf4


@pytest.fixture(scope="module")
def tiny_reports(tiny_models):
    fp32, nf4 = tiny_models
    return inspect_model(fp32, "tiny-llama-fp32"), inspect_model(nf4, "tiny-llama-nf4")


def _line_starting(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{text}"
    return lines[0]


def test_nf4_report_counts_4bit_and_full_precision_linears(tiny_reports):
    fp32_report, nf4_report = tiny_reports
    assert nf4_report.quantized_linears == TINY_LAYERS * LINEARS_PER_LAYER
    assert nf4_report.full_precision_linears == 1  # lm_head stays unquantized
    assert fp32_report.quantized_linears == 0
    assert fp32_report.full_precision_linears == TINY_LAYERS * LINEARS_PER_LAYER + 1

    summary = nf4_report.summary
    assert "Linear4bit" in summary
    assert f"(0-{TINY_LAYERS - 1}): {TINY_LAYERS} x LlamaDecoderLayer" in summary
    four_bit = _line_starting(summary, "4-bit")
    assert four_bit.split(": ", 2)[-1] == " ".join(LINEAR_NAMES) + f" ({TINY_LAYERS * LINEARS_PER_LAYER} layers)"
    assert "nf4" in four_bit and "double quant" in four_bit and "bfloat16" in four_bit
    full = _line_starting(summary, "Full precision")
    assert full.endswith(": lm_head (1 layer)")
    # The expanded representative block shows its quantized projections with their shapes.
    assert "(q_proj): Linear4bit(64→64)" in summary
    assert "(lm_head): Linear(64→1000)" in summary


def test_logical_parameter_count_is_the_same_for_fp32_and_nf4(tiny_models, tiny_reports):
    fp32, nf4 = tiny_models
    fp32_report, nf4_report = tiny_reports
    expected = sum(p.numel() for p in fp32.parameters())
    assert fp32_report.total_params == expected
    assert nf4_report.total_params == expected
    # The packed storage really is smaller, so the equality above is not a coincidence.
    assert sum(p.numel() for p in nf4.parameters()) < expected
    assert f"Parameters: {human_count(expected)}" in nf4_report.summary

    # Per-block counts: one decoder layer and the whole stack.
    layer = sum(p.numel() for p in fp32.model.layers[0].parameters())
    assert f"{human_count(layer)} each, {human_count(layer * TINY_LAYERS)} total" in nf4_report.summary


def test_footprint_nf4_is_well_below_fp32_and_shown(tiny_models, tiny_reports):
    fp32, nf4 = tiny_models
    fp32_report, nf4_report = tiny_reports
    assert fp32_report.footprint_bytes == fp32.get_memory_footprint()
    assert nf4_report.footprint_bytes == nf4.get_memory_footprint()
    # Embeddings and lm_head stay fp32 and dominate a model this small; still well under.
    assert nf4_report.footprint_bytes < 0.6 * fp32_report.footprint_bytes
    assert human_bytes(fp32_report.footprint_bytes) in fp32_report.summary
    assert human_bytes(nf4_report.footprint_bytes) in nf4_report.summary
    assert human_bytes(nf4_report.footprint_bytes) != human_bytes(fp32_report.footprint_bytes)


def test_dtype_and_device(tiny_reports):
    fp32_report, nf4_report = tiny_reports
    assert fp32_report.dtype == "float32"
    assert nf4_report.dtype.split(", ") == ["nf4", "float32"]  # by share of parameters
    assert fp32_report.device == nf4_report.device == "cpu"
    assert "dtype: nf4, float32 · device: cpu" in nf4_report.summary


def test_summaries_are_short_and_full_tree_has_more_detail(tiny_models, tiny_reports):
    fp32, _ = tiny_models
    for report in tiny_reports:
        assert len(report.summary) < SUMMARY_LIMIT
        tree = report.full_tree
        collapsed = f"(0-{TINY_LAYERS - 1}): {TINY_LAYERS} x LlamaDecoderLayer" in tree
        every_index = all(f"({i}): LlamaDecoderLayer" in tree for i in range(TINY_LAYERS))
        assert collapsed or every_index
        assert len(tree) > len(report.summary)
        # Exact counts and print(model)'s own layer descriptions appear only in the tree.
        total = sum(p.numel() for p in fp32.parameters())
        assert f"{total:,} params" in tree and f"{total:,}" not in report.summary
        assert "in_features=64, out_features=32, bias=False" in tree
        assert "in_features=64" not in report.summary
    # In the NF4 tree every module says how its own weights are stored.
    nf4_tree = tiny_reports[1].full_tree
    assert re.search(r"\(k_proj\): Linear4bit\(.*\)  # 2,048 params \(2\.0K\) · nf4$", nf4_tree, re.M)
    assert re.search(r"\(lm_head\): Linear\(.*\)  # 64,000 params \(64\.0K\) · float32$", nf4_tree, re.M)


def test_int8_load_reports_linear8bitlt(tiny_checkpoint, tiny_reports):
    int8 = LlamaForCausalLM.from_pretrained(tiny_checkpoint, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    report = inspect_model(int8, "tiny-llama-int8")
    assert report.quantized_linears == TINY_LAYERS * LINEARS_PER_LAYER
    assert report.full_precision_linears == 1
    assert report.total_params == tiny_reports[0].total_params  # int8 is not packed
    eight_bit = _line_starting(report.summary, "8-bit (Linear8bitLt")
    assert eight_bit.endswith(" ".join(LINEAR_NAMES) + f" ({TINY_LAYERS * LINEARS_PER_LAYER} layers)")
    assert "(q_proj): Linear8bitLt(64→64)" in report.summary
    assert report.dtype.split(", ") == ["int8", "float32"]


def test_tied_embeddings_are_counted_once_and_named():
    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    report = inspect_model(model, "tiny-tied")
    assert report.total_params == sum(p.numel() for p in model.parameters())  # dedups ties
    assert "tied to model.embed_tokens.weight" in report.summary


def test_plain_module_without_get_memory_footprint():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    report = inspect_model(model, "mlp")
    assert report.total_params == 10 * 20 + 20 + 20 * 5 + 5
    assert report.footprint_bytes == report.total_params * 4  # fallback: fp32 bytes
    assert report.full_precision_linears == 2 and report.quantized_linears == 0
    assert "(0): Linear(10→20, bias)" in report.summary
    # Different shapes must not be collapsed into one "N x" group.
    assert " x Linear" not in report.summary


def test_summary_degrades_to_fit_when_the_tree_is_huge():
    # 300 distinct layers cannot be collapsed and cannot fit; the header must survive.
    model = nn.Sequential(*[nn.Linear(8, 8 + i) for i in range(300)])
    report = inspect_model(model, "wide")
    assert len(report.summary) < SUMMARY_LIMIT
    assert "Parameters: " in report.summary and "Full precision" in report.summary
    assert "(299): Linear(in_features=8, out_features=307, bias=True)" in report.full_tree


def _meta_llama_8b() -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_31_8B))
    return model.to(torch.bfloat16)


def test_8b_summary_stays_short_on_meta_device():
    model = _meta_llama_8b()
    report = inspect_model(model, "meta-llama/Llama-3.1-8B-Instruct")
    assert report.total_params == LLAMA_31_8B_PARAMS
    assert "Parameters: 8.03B" in report.summary
    assert len(report.summary) < SUMMARY_LIMIT
    assert "(0-31): 32 x LlamaDecoderLayer" in report.summary
    assert report.device == "meta" and report.dtype == "bfloat16"
    # bf16 is two bytes a parameter; nothing is allocated, so the figure is an estimate.
    assert 2 * LLAMA_31_8B_PARAMS <= report.footprint_bytes < 2 * LLAMA_31_8B_PARAMS + 10**6
    assert "16.06 GB (estimated: meta device" in report.summary
    assert report.full_precision_linears == 32 * LINEARS_PER_LAYER + 1


def test_8b_with_4bit_layers_stays_short_on_meta_device():
    # The bitsandbytes swap transformers does before loading weights, on meta: every
    # projection becomes Linear4bit, lm_head stays full precision, as in a real NF4 load.
    from transformers.integrations import replace_with_bnb_linear

    model = replace_with_bnb_linear(_meta_llama_8b(), modules_to_not_convert=["lm_head"], quantization_config=_nf4_config())
    report = inspect_model(model, "meta-llama/Llama-3.1-8B-Instruct")
    assert report.total_params == LLAMA_31_8B_PARAMS
    assert report.quantized_linears == 32 * LINEARS_PER_LAYER
    assert report.full_precision_linears == 1
    assert len(report.summary) < SUMMARY_LIMIT
    assert "(224 layers)" in report.summary and "full precision" in report.summary.lower()
    assert "(q_proj): Linear4bit(4096→4096)" in report.summary


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (999, "999"), (64_000, "64.0K"), (134_500_000, "134.5M"), (999_960_000, "1.00B"), (LLAMA_31_8B_PARAMS, "8.03B")],
)
def test_human_count(n, text):
    assert human_count(n) == text


def test_human_bytes():
    assert human_bytes(16_060_522_752) == "16.06 GB"
    assert human_bytes(588_096) == "588.1 KB"
    assert human_bytes(12) == "12 B"


def test_importing_inspect_does_not_import_torch():
    import subprocess
    import sys

    from pathlib import Path

    code = "import sys, bot.inspect; print('torch' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
