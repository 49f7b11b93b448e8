"""`modelbot bench --cpu-baselines`: the CPU rows of issue 14, in the same run as the rest.

Two more rows next to "plain generate, 1 user", on the same prompt ids and new tokens, greedy,
EOS ignored, after a warm-up, each timed from the call to the last token (prefill included):

- plain `generate` with the same checkpoint loaded in float32 (the full-precision baseline),
  when the bench's model runs in another dtype or quantization;
- llama.cpp (llama-cpp-python, in-process) on the same GGUF file, when the model's source is a
  .gguf file: what a CPU-only host could run instead of modelbot.

Each is skipped, with one stderr line saying why, where it cannot be measured (on a GPU, a
source that is not a GGUF, llama_cpp not installed). Both run on the local engine's thread,
one after the other, never beside the worker's own generation. Heavy imports stay inside
functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.app import App
    from bot.bench import BenchOptions, PlainRun, Row, Target

FP32_LABEL = "plain generate, float32 (full-precision baseline), 1 user"
LLAMA_CPP_LABEL = "llama.cpp (llama-cpp-python), same GGUF, 1 user"
WARMUP_TOKENS = 8


def llama_cpp_generate(gguf_path: str, prompt: list[int], new_tokens: int, n_threads: int | None = None,
                       warmup_tokens: int = WARMUP_TOKENS, repeats: int = 1) -> tuple[int, float]:
    """(tokens, seconds) of llama.cpp generating `new_tokens` after `prompt`, greedy, EOS ignored;
    the fastest of `repeats` timed runs.

    The prompt is evaluated anew for each timed run (llama-cpp-python would otherwise reuse the
    warm-up's cached prefix), so the seconds include its prefill, like plain generate's."""
    llm = load_llama_cpp(gguf_path, n_ctx=max(512, len(prompt) + new_tokens + 16),
                         n_threads=n_threads or os.cpu_count() or 1)
    try:
        _llama_cpp_tokens(llm, prompt, min(warmup_tokens, new_tokens))
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            generated = _llama_cpp_tokens(llm, prompt, new_tokens)
            runs.append((len(generated), time.perf_counter() - started))
    finally:
        llm.close()
    from bot.bench import _fastest

    return _fastest(runs)


def load_llama_cpp(gguf_path: str, n_ctx: int, n_threads: int) -> Any:
    """llama_cpp.Llama for `gguf_path`, quiet, without llama.cpp's extra buffer types (below)."""
    import llama_cpp

    with llama_cpp_without_extra_buffer_types():
        return llama_cpp.Llama(model_path=gguf_path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                               verbose=False)


@contextmanager
def llama_cpp_without_extra_buffer_types() -> Iterator[None]:
    """Models loaded by llama-cpp-python inside this block do without llama.cpp's "extra buffer
    types", its CPU repacking and AMX matmul kernels.

    llama-cpp-python 0.3.36's AMX `ggml_backend_amx_mul_mat` crashes the process with SIGSEGV
    on the first decode on an AMX-BF16 CPU (a Q4_1 GGUF, 2 cores: this development machine),
    so they are turned off, as llama.cpp's own `--no-repack` does. Llama() has no argument for
    it, hence the default parameters are wrapped meanwhile (tests/llama_cpp_launcher.py wraps
    its whole server)."""
    import llama_cpp.llama_cpp as capi

    defaults = capi.llama_model_default_params

    def without_extra_buffer_types():
        params = defaults()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    capi.llama_model_default_params = without_extra_buffer_types
    try:
        yield
    finally:
        capi.llama_model_default_params = defaults


def _llama_cpp_tokens(llm: Any, prompt: list[int], count: int) -> list[int]:
    llm.reset()  # forget the previous run: n_tokens 0, so generate() reuses no cached prefix
    generated: list[int] = []
    if count <= 0:
        return generated
    # temp 0: greedy; generate() yields token after token and never stops at EOS by itself
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        generated.append(int(token))
        if len(generated) >= count:
            break
    return generated


def fp32_plain_generate(loaded: Any, prompt: list[int], new_tokens: int, repeats: int = 1) -> PlainRun:
    """The bench's plain generate on a float32 copy of the loaded model's checkpoint (worker thread)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bot.bench import plain_generate

    recipe = loaded.backend.load_recipe("none", "cpu", loaded.model_type)  # full precision: float32 on a CPU
    location = loaded.model.name_or_path
    model = AutoModelForCausalLM.from_pretrained(location, device_map="cpu", trust_remote_code=loaded.spec.trust_remote_code,
                                                 **recipe.kwargs)
    model.eval()
    try:
        if model.dtype != torch.float32:
            raise RuntimeError(f"the float32 copy loaded as {model.dtype}")
        return plain_generate(SimpleNamespace(model=model, tokenizer=loaded.tokenizer), prompt, new_tokens, repeats)
    finally:
        del model


def _runs_in_float32(loaded: Any) -> bool:
    import torch

    return loaded.recipe.quantization == "none" and loaded.model.dtype == torch.float32


async def cpu_baseline_rows(app: App, target: Target, options: BenchOptions, prompt: list[int],
                            plain: PlainRun) -> list[Row]:
    """The float32 and llama.cpp rows for `target`'s model (each may be skipped), with their
    ratio to the bench's plain generate, measured on `prompt` with options.new_tokens."""
    from bot.bench import Row, _on_loaded_model, _rate, _warn_if_shared, _with_cpu_share, package_version, progress

    model = target.model
    plain_rate = _rate(plain.tokens, plain.seconds)

    def facts(loaded: Any) -> dict[str, Any]:
        return {"device": loaded.device, "float32": _runs_in_float32(loaded)}

    about = await _on_loaded_model(app, model, facts)
    if about["device"].startswith("cuda"):
        progress("cpu baselines: skipped, the model runs on a GPU (they compare CPU decoding)")
        return []
    rows: list[Row] = []

    if about["float32"]:
        progress("cpu baselines: float32 plain generate skipped, the model already runs in float32 "
                 "(that is the plain generate row)")
    else:
        progress("cpu baselines: plain generate with the same checkpoint in float32 (a warm-up first)")
        run, share = await _with_cpu_share(
            _on_loaded_model(app, model, lambda loaded: fp32_plain_generate(loaded, prompt, options.new_tokens,
                                                                             options.repeats)))
        rate = _rate(run.tokens, run.seconds)
        rows.append(Row(FP32_LABEL, rate, run.first_token_seconds, run.first_token_seconds,
                        rate / plain_rate if plain_rate else None, "plain generate", run.tokens, run.seconds, share))

    resolved = app.catalog.resolved(app.catalog.spec(model))
    if resolved.kind != "gguf":
        progress(f"cpu baselines: llama.cpp skipped, the model's source is not a .gguf file ({resolved.location})")
    elif not _llama_cpp_installed():
        progress("cpu baselines: llama.cpp skipped, llama_cpp is not installed (pip install llama-cpp-python)")
    else:
        version = package_version("llama_cpp_python", "unknown version")
        progress(f"cpu baselines: llama.cpp {version} on {resolved.gguf_name}, {os.cpu_count()} threads (a warm-up first)")
        gguf = resolved.location
        (tokens, seconds), share = await _with_cpu_share(
            _on_loaded_model(app, model, lambda _: llama_cpp_generate(gguf, prompt, options.new_tokens,
                                                                      repeats=options.repeats)))
        if tokens < options.new_tokens:
            progress(f"warning: llama.cpp produced {tokens} of {options.new_tokens} tokens")
        rate = _rate(tokens, seconds)
        rows.append(Row(LLAMA_CPP_LABEL.replace("llama-cpp-python", f"llama-cpp-python {version}"), rate,
                        ratio=rate / plain_rate if plain_rate else None, ratio_to="plain generate",
                        tokens=tokens, seconds=seconds, other_cpu_share=share))
    _warn_if_shared(rows)
    return rows


def _llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None
