"""/layers as a picture: the PNG opens, has the promised size, and has one bar per top-level
block of the model (counted from its pixels), coloured by how the block is stored. Real models:
the embedded SmolLM2 (30 decoder layers, tied embeddings) through the console, a tiny Qwen2
checkpoint in NF4 through `modelbot layers --picture`, and Llama-3.1-8B's shape on meta."""

from __future__ import annotations

import asyncio
import io
import subprocess

import family_fixtures as ff
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from bot.app import build_app
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent
from bot.inspect import inspect_model
from bot.layers_picture import COLOURS, TIED, picture_size, render_layers_png
from helpers import RecordingOut, cli, cli_env, smollm2, write_config

SMOLLM2_LAYERS = 30  # SmolLM2-135M's num_hidden_layers (its config.json)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_KEYS = {tuple(int(hex_[i:i + 2], 16) for i in (1, 3, 5)): key for key, hex_ in COLOURS.items()}


def bars(png: bytes) -> list[tuple[int, int, str]]:
    """The bars along a pixel row just above the x-axis: (first x, last x, colour key) each, left
    to right. Bars stand on the axis, so the lowest rows holding a bar colour cross every one."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    pixels = image.load()
    lowest = next(y for y in range(height - 1, -1, -1) if any(pixels[x, y] in COLOUR_KEYS for x in range(width)))
    y = lowest - 2  # clear of the axis line's antialiased edge
    runs: list[tuple[int, int, str]] = []
    for x in range(width):
        key = COLOUR_KEYS.get(pixels[x, y])
        if key is not None and runs and runs[-1][1] == x - 1 and runs[-1][2] == key:
            runs[-1] = (runs[-1][0], x, key)
        elif key is not None:
            runs.append((x, x, key))
    # neighbouring runs of different colours with no gap would be one bar drawn wrongly
    assert all(later[0] - earlier[1] > 1 for earlier, later in zip(runs, runs[1:])), runs
    return runs


def top_level_blocks(model) -> list[str]:
    """Independently of bot.inspect: the inner model's children that hold parameters, with its
    layer list opened into the layers, then the head."""
    inner = model.model
    names = []
    for name, child in inner.named_children():
        if name == "layers":
            names += [f"model.layers.{i}" for i in range(len(child))]
        elif any(True for _ in child.parameters()):
            names.append(f"model.{name}")
    return names + ["lm_head"]


def opened(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.verify()  # a complete, uncorrupted PNG
    return Image.open(io.BytesIO(png))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny Qwen2 (2 decoder layers, tied embeddings) saved as a local checkpoint."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    ff.model("qwen2").save_pretrained(path)
    ff.tokenizer("qwen2").save_pretrained(path)
    return path


def test_blocks_are_the_models_top_level_modules_in_order():
    model = ff.model("qwen2")
    report = inspect_model(model, "tiny")
    assert [block.name for block in report.blocks] == top_level_blocks(model)  # rotary_emb (no weights) left out
    by_name = dict(model.named_modules())
    for block in report.blocks:
        assert block.params == sum(p.numel() for p in by_name[block.name].parameters())
    assert [block.tied for block in report.blocks] == [False] * (len(report.blocks) - 1) + [True]
    assert report.blocks[-1].params == report.blocks[0].params  # lm_head shows the embedding's size


def test_meta_8b_with_4bit_layers_draws_35_bars_by_storage():
    from transformers import BitsAndBytesConfig
    from transformers.integrations import replace_with_bnb_linear

    shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
    model = replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"],
                                    quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    report = inspect_model(model, "llama-8b-nf4")
    png = render_layers_png([report])
    assert opened(png).size == picture_size(1) == (1200, 675)
    found = bars(png)
    assert len(found) == len(top_level_blocks(model)) == 32 + 3
    assert [key for _, _, key in found] == ["16/32-bit"] + ["4-bit"] * 32 + ["16/32-bit"] * 2  # embed, layers, norm, head
    # the log scale keeps the 4,096-parameter norm a visible bar beside 525M-parameter embeddings
    assert found[-2][1] - found[-2][0] >= 5


def test_console_layers_and_compare_layers_write_pngs(tmp_path, tiny_checkpoint):
    config = write_config(tmp_path, [smollm2(), {"name": "tiny", "source": str(tiny_checkpoint)}],
                          max_resident_models=2)
    attachments = tmp_path / "attachments"

    async def session():
        app = build_app(load_settings(config))
        out = RecordingOut()
        reply = ConsoleReply(out, RecordingOut(), attachments_dir=attachments)
        try:
            await app.host.handle(ChatEvent("c", "u", "/layers"), reply)
            layers = out.text
            out.writes.clear()
            await app.host.handle(ChatEvent("c", "u", "/compare --layers smollm2,tiny"), reply)
            compared = out.text
            out.writes.clear()
            await app.host.handle(ChatEvent("c", "u", "/compare --layers smollm2"), reply)
            return layers, compared, out.text
        finally:
            await app.close()

    layers, compared, usage = asyncio.run(session())
    picture = attachments / "smollm2-layers.png"
    assert f"[full module tree saved to {attachments / 'smollm2-layers.txt'}]" in layers
    assert layers.rstrip().endswith(f"[layers as a picture saved to {picture}]")  # after the summary and tree
    png = picture.read_bytes()
    assert opened(png).size == (1200, 675)
    found = bars(png)
    assert len(found) == 1 + SMOLLM2_LAYERS + 1 + 1  # embed_tokens, layers 0-29, norm, lm_head
    assert found[-1][2] == TIED and found[0][2] == "16/32-bit"  # lm_head is the embeddings, tied
    assert {key for _, _, key in found[1:-1]} == {"16/32-bit"}  # fp32 on the CPU

    # /compare --layers: one line per model and one picture, the two models side by side
    lines = compared.splitlines()
    assert lines[0].startswith("`smollm2` · 134.5M parameters") and "33 blocks" in lines[0]
    assert lines[1].startswith("`tiny` · ") and "5 blocks" in lines[1]
    side_by_side = attachments / "smollm2-vs-tiny-layers.png"
    assert f"[layers side by side saved to {side_by_side}]" in compared
    png = side_by_side.read_bytes()
    width, height = opened(png).size
    assert (width, height) == picture_size(2) and width > 1200
    found = bars(png)
    left = [bar for bar in found if bar[1] < width / 2]
    right = [bar for bar in found if bar[0] > width / 2]
    assert len(left) == 33 and len(right) == len(top_level_blocks(ff.model("qwen2"))) == 5
    assert len(found) == 33 + 5
    assert left[-1][2] == right[-1][2] == TIED
    assert "Usage: /compare --layers a,b" in usage


def test_cli_layers_picture_writes_a_png(tmp_path, tiny_checkpoint):
    config = write_config(tmp_path, [{"name": "tiny", "source": str(tiny_checkpoint), "quantization": "nf4"}])
    picture = tmp_path / "tiny.png"
    done = subprocess.run(cli("layers", "--config", str(config), "--model", "tiny", "--picture", str(picture)),
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "`tiny` · Qwen2ForCausalLM" in done.stdout  # the summary is still printed
    assert f"modelbot: layers picture saved to {picture}" in done.stderr.splitlines()
    png = picture.read_bytes()
    assert opened(png).size == (1200, 675)
    found = bars(png)
    # embeddings stay 16/32-bit, both decoder layers are NF4, the norm is not quantized, the head is tied
    assert [key for _, _, key in found] == ["16/32-bit", "4-bit", "4-bit", "16/32-bit", TIED]
