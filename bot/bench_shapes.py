"""Random-weight models of real families' shapes, so `modelbot bench` needs no download.

Speed depends on a model's shape, not on its weights, so the bench builds a model with a
family's published dimensions and small random weights, saves it like any checkpoint
(safetensors, a tokenizer, a chat template) and loads it through the catalog like any
configured model. The values below are the published config.json ones:

| shape           | model_type | vocab  | hidden | layers | heads | KV heads | head dim | intermediate | tied  |
|-----------------|------------|--------|--------|--------|-------|----------|----------|--------------|-------|
| llama-3.1-8b    | llama      | 128256 | 4096   | 32     | 32    | 8        | 128      | 14336        | no    |
| phi-3-mini      | phi3       | 32064  | 3072   | 32     | 32    | 32       | 96       | 8192         | no    |
| gemma-2-2b      | gemma2     | 256000 | 2304   | 26     | 8     | 4        | 256      | 9216         | yes   |
| mistral-7b-v0.3 | mistral    | 32768  | 4096   | 32     | 32    | 8        | 128      | 14336        | no    |
| qwen2-7b        | qwen2      | 152064 | 3584   | 28     | 28    | 4        | 128      | 18944        | no    |
| tiny (--smoke)  | llama      | 512    | 64     | 2      | 4     | 2        | 16       | 128          | no    |

Sources: meta-llama/Llama-3.1-8B-Instruct, microsoft/Phi-3-mini-4k-instruct,
google/gemma-2-2b-it, mistralai/Mistral-7B-Instruct-v0.3 and Qwen/Qwen2-7B-Instruct
config.json. Special token ids are the bench tokenizer's own (see `_SPECIAL_TOKENS`), not
the real ones: the real tokenizers cannot be downloaded here.

A build goes into `<cache_dir>/bench-shapes/<shape>/`; a marker file written last (holding
the shape's definition) says the build is complete and current, so an interrupted or
outdated build is redone and a complete one is reused. Two benches building the same
shape at the same moment are not guarded against.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "phi-3-mini": {
        "model_type": "phi3",
        "vocab_size": 32064,
        "hidden_size": 3072,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 8192,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "sliding_window": 2047,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
    "gemma-2-2b": {
        "model_type": "gemma2",
        "vocab_size": 256000,
        "hidden_size": 2304,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "intermediate_size": 9216,
        "max_position_embeddings": 8192,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
    "mistral-7b-v0.3": {
        "model_type": "mistral",
        "vocab_size": 32768,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "sliding_window": None,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    },
    "qwen2-7b": {
        "model_type": "qwen2",
        "vocab_size": 152064,
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 131072,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    },
}

#: the seconds-long CPU shape `--smoke` uses (llama-style, not a published model)
SMOKE_SHAPE = "tiny"
SHAPES[SMOKE_SHAPE] = {
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}

# The bench tokenizer's vocabulary: these, then "t4".."t{vocab-1}" (token tN has id N).
_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = range(len(_SPECIAL_TOKENS))
# Just enough template for the catalog to build prompts; the family plugins fold a system
# message into the first user turn when a template never mentions "system".
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
MARKER = "bench-shape.json"
# Uniform weights in +-this: small enough that activations and logits stay finite and tame.
_WEIGHT_SCALE = 0.02


def shape_config(shape: str) -> Any:
    """The transformers config object of a shape, with the bench tokenizer's special ids."""
    from transformers import AutoConfig

    fields = dict(SHAPES[shape])
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(
        model_type, **fields, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID
    )


def shape_dir(cache_dir: Path, shape: str) -> Path:
    return Path(cache_dir).expanduser() / "bench-shapes" / shape


def ensure_shape(shape: str, cache_dir: Path, progress: Callable[[str], None] = lambda _: None) -> Path:
    """The directory of a built shape, building it first unless a complete build is there."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    directory = shape_dir(cache_dir, shape)
    if _is_complete(directory, shape):
        progress(f"reusing the {shape} shape built in {directory}")
        return directory
    if directory.exists():
        shutil.rmtree(directory)  # an interrupted or outdated build
    directory.mkdir(parents=True)
    progress(f"building the {shape} shape with random weights in {directory}")
    _save_model(shape, directory)
    _save_tokenizer(SHAPES[shape]["vocab_size"], directory)
    (directory / MARKER).write_text(_marker_text(shape), encoding="utf-8")  # last: the build is complete
    return directory


def _marker_text(shape: str) -> str:
    return json.dumps({"shape": shape, "fields": SHAPES[shape], "special_tokens": _SPECIAL_TOKENS}, sort_keys=True)


def _is_complete(directory: Path, shape: str) -> bool:
    marker = directory / MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8") == _marker_text(shape)


def build_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _save_model(shape: str, directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = shape_config(shape)
    # Allocated straight on the device without transformers' init (minutes for 8B on a CPU),
    # then filled in place: seconds on a GPU.
    with torch.device(build_device()), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    _fill_random(model, config.model_type)
    model.save_pretrained(directory, safe_serialization=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fill_random(model: Any, model_type: str) -> None:
    import torch

    generator = torch.Generator(device=model.device).manual_seed(0)
    # Gemma's RMSNorm scales by (1 + weight); the others by weight.
    neutral_norm = 0.0 if model_type.startswith("gemma") else 1.0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.fill_(neutral_norm)
            elif name.endswith(".bias"):
                parameter.zero_()
            else:
                parameter.uniform_(-_WEIGHT_SCALE, _WEIGHT_SCALE, generator=generator)
        # A zero output row leaves <eos> practically never the greedy choice, so replies that
        # do stop at eos (the overhead row goes through the host, which does) run full length.
        model.get_output_embeddings().weight[EOS_ID].zero_()


def _save_tokenizer(vocab_size: int, directory: Path) -> None:
    tokenizer = bench_tokenizer(vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)


def bench_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with one token per model id: "t7" is id 7, unknown words <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS)}
    vocab.update({f"t{i}": i for i in range(len(_SPECIAL_TOKENS), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    pad, eos, bos, unk = _SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=pad, eos_token=eos, bos_token=bos, unk_token=unk
    )
