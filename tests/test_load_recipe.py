"""The loading recipe: `auto` means NF4 + double quant + bf16 compute on a GPU and full
precision on a CPU; explicit modes are honoured everywhere."""

from __future__ import annotations

import pytest
import torch

from bot.backend import BackendError
from plugins.llama import LlamaBackend


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_auto_on_gpu_is_nf4_double_quant_bf16(device):
    recipe = LlamaBackend().load_recipe("auto", device)
    config = recipe.quantization_config
    assert recipe.quantization == "nf4"
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert recipe.kwargs["dtype"] == torch.bfloat16


def test_auto_on_cpu_is_full_precision():
    recipe = LlamaBackend().load_recipe("auto", "cpu")
    assert (recipe.quantization, recipe.quantization_config, recipe.kwargs["dtype"]) == ("none", None, torch.float32)


@pytest.mark.parametrize("mode, attribute", [("nf4", "load_in_4bit"), ("int8", "load_in_8bit")])
def test_explicit_modes_apply_on_cpu_too(mode, attribute):
    recipe = LlamaBackend().load_recipe(mode, "cpu")
    assert recipe.quantization == mode and getattr(recipe.quantization_config, attribute)


def test_unknown_mode_is_refused():
    with pytest.raises(BackendError, match="unknown quantization 'fp8'"):
        LlamaBackend().load_recipe("fp8", "cuda")
