"""The embedded SmolLM2 in NF4 on the CPU: real Linear4bit layers, a smaller footprint,
and /layers (chat) and `modelbot layers` (CLI) saying both."""

from __future__ import annotations

import asyncio
import re
import subprocess

from bot.app import build_app
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent
from helpers import RecordingOut, cli, cli_env, smollm2, write_config


def _footprint_mb(summary: str) -> float:
    value, unit = re.search(r"memory: ([\d.]+) (MB|GB)", summary).groups()
    return float(value) * (1000 if unit == "GB" else 1)


def test_layers_reports_nf4_and_footprint(tmp_path):
    config = write_config(
        tmp_path,
        [smollm2("fp32", quantization="none"), smollm2("nf4", quantization="nf4", generation={"do_sample": False, "max_new_tokens": 6})],
        max_resident_models=2,
    )

    async def ask_layers():
        app = build_app(load_settings(config))
        out = RecordingOut()
        reply = ConsoleReply(out, RecordingOut(), attachments_dir=tmp_path / "attachments")
        try:
            await app.host.handle(ChatEvent("c", "u", "/layers nf4"), reply)
            nf4 = out.text
            out.writes.clear()
            await app.host.handle(ChatEvent("c", "u", "/layers fp32"), reply)
            fp32 = out.text
            out.writes.clear()
            # and the 4-bit model still answers
            await app.host.handle(ChatEvent("c", "u", "/model nf4"), reply)
            await app.host.handle(ChatEvent("c", "u", "What is the capital of France?"), reply)
            return nf4, fp32, out.text
        finally:
            await app.close()

    nf4, fp32, answer = asyncio.run(ask_layers())
    assert "Linear4bit" in nf4 and "(0-29): 30 x LlamaDecoderLayer" in nf4
    assert re.search(r"4-bit \(Linear4bit: nf4, double quant", nf4)
    assert re.search(r"Full precision \(\w+\): lm_head", nf4)  # lm_head stays unquantized
    assert "Linear4bit" not in fp32
    # parameter totals agree; the 4-bit footprint is far smaller than fp32 (538 MB)
    assert re.search(r"Parameters: ([\d.]+M)", nf4).group(1) == re.search(r"Parameters: ([\d.]+M)", fp32).group(1)
    assert _footprint_mb(fp32) > 500
    assert _footprint_mb(nf4) < 0.4 * _footprint_mb(fp32)
    # the full tree came as an attachment after the summary
    attachment = tmp_path / "attachments" / "nf4-layers.txt"
    assert f"[full module tree saved to {attachment}]" in nf4
    assert "(q_proj): Linear4bit(in_features=576, out_features=576, bias=False)" in attachment.read_text()
    assert "Paris" in answer


def test_layers_cli_full_tree(tmp_path):
    config = write_config(tmp_path, [smollm2("nf4", quantization="nf4")])
    done = subprocess.run(
        cli("layers", "--config", str(config), "--model", "nf4", "--full"),
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "memory:" in done.stdout
    # the full tree is print(model)'s own layer text, annotated with exact parameter counts
    assert "(gate_proj): Linear4bit(in_features=576, out_features=1536, bias=False)  # 884,736 params" in done.stdout
