"""`modelbot bench`: the smoke run through the real CLI, the shapes it builds, its arithmetic."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import cli, cli_env

from bot.bench import ThrottledReplyStream, percentile, sequential_first_tokens
from bot.bench_shapes import (
    MARKER,
    SHAPES,
    SMOKE_SHAPE,
    bench_tokenizer,
    ensure_shape,
    shape_config,
)

SMOKE_ROW_LABELS = (
    "model load (first, through the worker)",
    "memory footprint",
    "plain generate, 1 user (batch 1)",
    "worker, 1 concurrent user",
    "plain generate, 4 users one after another",
    "worker, 4 concurrent users",
    "worker, 1 user again, after the concurrent runs",
    "raw generate, chat prompt (overhead baseline)",
    "full pipeline: host + worker + streamed reply",
)
NULL_ROW_LABELS = tuple(f"null model, {n} concurrent repl{'ies' if n > 1 else 'y'}: host + worker + streamed replies"
                        for n in (1, 16, 64, 256))


def test_smoke_bench_through_the_cli(tmp_path):
    env = cli_env()
    env.pop("MODELBOT_CONFIG", None)  # --smoke needs no config file
    out = tmp_path / "bench.json"
    done = subprocess.run(
        cli("bench", "--smoke", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)),
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    for label in SMOKE_ROW_LABELS + NULL_ROW_LABELS:
        assert f"| {label} |" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["load_seconds"] > 0 and figures["footprint_bytes"] > 0
    assert [row["label"] for row in figures["rows"]] == list(SMOKE_ROW_LABELS[2:] + NULL_ROW_LABELS)
    for row in figures["rows"]:
        assert row["tokens_per_second"] > 0, row
        assert row["tokens"] > 0, row
    null_rows = [row for row in figures["rows"] if row["label"] in NULL_ROW_LABELS]
    for replies, row in zip((1, 16, 64, 256), null_rows):
        assert row["tokens"] == replies * 8  # every reply ran to --smoke's 8 new tokens
        assert row["microseconds_per_token"] == pytest.approx(row["seconds"] * 1e6 / row["tokens"])
    assert figures["overhead_ratio"] > 0
    assert "bench: " in done.stderr  # progress goes to stderr, the table alone to stdout


def test_null_model_replies_stream_whole_through_host_worker_and_reply(tmp_path):
    """The null model's path is the real one: every reply, alone or batched with others, shows
    the null model's words in order, as a platform message would, with the host's footer."""
    import asyncio

    from bot.bench_null import measure_null

    runs = asyncio.run(measure_null(tmp_path / "cache", tmp_path / "scratch", [1, 5], 12, 0.0, lambda _: None))
    expected = " ".join(f"t{i}" for i in range(4, 16))  # after the prompt's last word (<unk>, id 3)
    assert [run.replies for run in runs] == [1, 5]
    for run in runs:
        assert run.tokens == run.replies * 12
        assert run.texts == [expected] * run.replies
        assert run.edits >= run.replies  # each reply was edited at least once after its placeholder


# Each family's published config.json values (restated here, not read from bot.bench_shapes),
# and the parameter count its model card gives: a wrong dimension would change the count.
PUBLISHED = {
    "llama-3.1-8b": ("llama", 128256, 4096, 32, 32, 8, 128, 14336, False, 8_030_261_248),
    "phi-3-mini": ("phi3", 32064, 3072, 32, 32, 32, 96, 8192, False, 3_821_079_552),
    "gemma-2-2b": ("gemma2", 256000, 2304, 26, 8, 4, 256, 9216, True, 2_614_341_888),
    "mistral-7b-v0.3": ("mistral", 32768, 4096, 32, 32, 8, 128, 14336, False, 7_248_023_552),
    "qwen2-7b": ("qwen2", 152064, 3584, 28, 28, 4, 128, 18944, False, 7_615_616_512),
}


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_shape_config_matches_the_published_one(shape):
    import torch
    from transformers import AutoModelForCausalLM

    model_type, vocab, hidden, layers, heads, kv_heads, head_dim, intermediate, tied, params = PUBLISHED[shape]
    config = shape_config(shape)
    assert (config.model_type, config.vocab_size, config.hidden_size, config.num_hidden_layers) == (
        model_type, vocab, hidden, layers)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (
        heads, kv_heads, intermediate)
    assert (getattr(config, "head_dim", None) or hidden // heads) == head_dim
    assert config.tie_word_embeddings is tied
    with torch.device("meta"):  # the shape without its 16 GB of weights
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == params


def test_llama_shape_keeps_llama_3_1_rope_scaling():
    rope = shape_config("llama-3.1-8b").rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500000.0 and rope["factor"] == 8.0


def test_tiny_shape_is_built_once_then_reused(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    messages: list[str] = []
    directory = ensure_shape(SMOKE_SHAPE, tmp_path, messages.append)
    weights = directory / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert (directory / MARKER).is_file()
    assert ensure_shape(SMOKE_SHAPE, tmp_path, messages.append) == directory
    assert weights.stat().st_mtime_ns == built_at
    assert messages[0].startswith("building") and messages[1].startswith("reusing")

    config = AutoConfig.from_pretrained(directory)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, SHAPES[SMOKE_SHAPE]["vocab_size"])
    for name, tensor in load_file(weights).items():
        assert tensor.float().isfinite().all() and tensor.float().abs().max() <= 1.0, name
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert len(tokenizer) == config.vocab_size and tokenizer.chat_template


def test_an_interrupted_build_is_redone(tmp_path):
    directory = ensure_shape(SMOKE_SHAPE, tmp_path)
    (directory / MARKER).unlink()  # as if the build had stopped before its last step
    (directory / "model.safetensors").write_bytes(b"half a file")
    messages: list[str] = []
    ensure_shape(SMOKE_SHAPE, tmp_path, messages.append)
    assert messages[0].startswith("building") and (directory / MARKER).is_file()
    assert os.path.getsize(directory / "model.safetensors") > 1000


def test_bench_tokenizer_has_one_token_per_id():
    tokenizer = bench_tokenizer(300)
    assert len(tokenizer) == 300
    ids = tokenizer("t7 t299 t4", add_special_tokens=False).input_ids
    assert ids == [7, 299, 4]
    assert tokenizer.decode(ids) == "t7 t299 t4"


def test_first_tokens_of_users_served_one_after_another():
    # each request takes 2 s and shows its first token after 0.1 s
    assert sequential_first_tokens(3, 2.0, 0.1) == [0.1, 2.1, 4.1]
    assert percentile([0.1, 2.1, 4.1], 50) == pytest.approx(2.1)
    assert percentile([0.1, 2.1, 4.1], 95) == pytest.approx(3.9)
    assert percentile([5.0], 95) == 5.0


def test_reply_stream_edits_at_most_once_per_interval():
    import asyncio

    async def stream_tokens() -> ThrottledReplyStream:
        stream = ThrottledReplyStream(interval=3600)
        for word in ("a", " b", " c"):
            await stream.write(word)
        await stream.finish("model · 1.0 tok/s")
        return stream

    stream = asyncio.run(stream_tokens())
    assert stream.edits == 2  # the first text at once, then only the final edit
    assert stream.message.startswith("a b c") and stream.message.endswith("1.0 tok/s")


def test_a_configured_model_keeps_its_batching_and_gets_room_in_the_queue(tmp_path):
    import argparse

    from helpers import smollm2, write_config

    from bot.bench import bench_target
    from bot.config import load_settings

    config = write_config(tmp_path, [smollm2()], worker={"max_batch": 8, "max_pending": 4})
    args = argparse.Namespace(model="smollm2", shape=None, smoke=False, device=None, quantization="none")
    scratch = tmp_path / "scratch"
    target = bench_target(load_settings(config), args, scratch, users=300)
    worker = target.settings.worker
    assert (worker.max_batch, worker.max_pending, worker.max_pending_per_user) == (8, 300, 64)
    assert target.settings.model("smollm2").quantization == "none"
    assert target.settings.store_path.parent == scratch  # never the deployment's sqlite file


# Every family's shape, scaled down to seconds: the same model_type and family quirks (Gemma
# 2's tied embeddings and soft-capping, Qwen2's biases, Phi-3's fused projections).
SMALL = {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 256}


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_each_family_shape_builds_loads_and_generates(shape, tmp_path, monkeypatch):
    import asyncio

    from bot.app import build_app
    from bot.config import parse_settings
    from bot.worker import GenerationJob

    small = f"small-{shape}"
    fields = {**SHAPES[shape], **SMALL}
    fields.pop("original_max_position_embeddings", None)  # Phi-3's equals the full context
    if "head_dim" in fields:
        fields["head_dim"] = 8
    monkeypatch.setitem(SHAPES, small, fields)
    source = ensure_shape(small, tmp_path)
    settings = parse_settings({"device": "cpu", "store": str(tmp_path / "s.sqlite3"),
                               "models": [{"name": small, "source": str(source)}]}, tmp_path)

    async def generate() -> tuple[str, int]:
        app = build_app(settings)
        try:
            job = GenerationJob(model=small, input_ids=[5, 6, 7, 8], stop_token_ids=[],
                                settings={"do_sample": False, "max_new_tokens": 6}, user="u0", channel="t")
            stream = app.worker.submit(job)
            text = "".join([delta async for delta in stream])
            return text, stream.stats.new_tokens
        finally:
            await app.close()

    text, new_tokens = asyncio.run(generate())
    assert new_tokens == 6
    assert all(word.startswith("t") for word in text.split())  # ordinary ids, never <eos>
