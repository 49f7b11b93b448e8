"""`modelbot doctor` against the local Discord and Slack emulators, a small OpenAI-compatible
server, real model folders and a closed port: each problem is one failing line that says what
to do, the exit status is 1 when anything failed, and tokens are never printed."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from discord_emulator import DiscordEmulator
from emulator_base import LocalServer
from helpers import cli, cli_env, smollm2, write_config
from slack_emulator import DEFAULT_BOT_SCOPES, SlackEmulator

from bot.config import load_settings
from bot.doctor import run_doctor
from bot.doctor.machine import TorchProbe, bitsandbytes_check, memory_checks
from bot.doctor.models import remote_checks
from bot.doctor.platforms import manifest_bot_scopes
from bot.doctor.report import FAIL, OK, Check

DISCORD_TOKEN = "the-right-discord-token"
PLATFORM_VARIABLES = ("DISCORD_TOKEN", "DISCORD_API_BASE", "DISCORD_GATEWAY_URL", "SLACK_BOT_TOKEN",
                      "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_API_BASE", "SLACK_PORT")


@pytest.fixture(autouse=True)
def no_platform_environment(monkeypatch):
    """The sections in the test's config decide, not a developer's exported tokens."""
    for variable in PLATFORM_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


class OpenAIServer(LocalServer):
    """GET /v1/models as vLLM answers it (with --served-model-name and --api-key)."""

    def __init__(self, served: str, api_key: str | None = None):
        super().__init__()
        self.served, self.api_key = served, api_key

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [
            {"id": self.served, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 8192}]})


def remote_model(name: str, base_url: str, **fields) -> dict:
    return {"name": name, "engine": "openai", "base_url": base_url, "api": "chat", "family": "llama", **fields}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: connections are refused


async def doctor(config: Path) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = await run_doctor(load_settings(config), out)
    return code, out.getvalue().splitlines()


def failing(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("fail")]


@asynccontextmanager
async def platforms(discord: dict | None = None, slack: dict | None = None):
    async with DiscordEmulator(token=DISCORD_TOKEN, **(discord or {})) as discord_emu, \
            SlackEmulator(**(slack or {})) as slack_emu:
        yield discord_emu, slack_emu


def doctor_against_platforms(tmp_path, discord: dict | None = None, slack: dict | None = None,
                             **tokens) -> tuple[int, list[str]]:
    """doctor on a config with a reachable remote model and both emulators (`tokens`: what
    sections() takes to give a wrong one)."""
    async def run():
        async with platforms(discord, slack) as (discord_emu, slack_emu), OpenAIServer("m") as server:
            config = write_config(tmp_path, [remote_model("r", f"{server.http_base}/v1")],
                                  **sections(discord_emu, slack_emu, **tokens))
            return await doctor(config)

    return asyncio.run(run())


def sections(discord_emu, slack_emu, discord_token: str = DISCORD_TOKEN, slack_token: str | None = None) -> dict:
    return {
        "discord": {"enabled": True, "token": discord_token, "api_base": discord_emu.api_base,
                    "gateway_url": discord_emu.gateway_url},
        "slack": {"enabled": True, "bot_token": slack_token or slack_emu.bot_token, "app_token": slack_emu.app_token,
                  "api_base": slack_emu.api_base},
    }


def test_check_lines_have_the_promised_shape():
    assert Check(OK, "python", "3.11.7").line() == "ok    python: 3.11.7"
    assert Check(FAIL, "discord token", "refused", "reset it").line() == "fail  discord token: refused — reset it"


def test_all_good_is_exit_0_and_ok_lines_only(tmp_path):
    async def run():
        async with platforms() as (discord_emu, slack_emu), OpenAIServer("llama-3.1-8b") as server:
            config = write_config(tmp_path, [smollm2(), remote_model("remote", f"{server.http_base}/v1",
                                                                      served_model="llama-3.1-8b")],
                                  **sections(discord_emu, slack_emu))
            return await doctor(config)

    code, lines = asyncio.run(run())
    assert code == 0, lines
    assert lines and all(line.startswith("ok    ") for line in lines), lines
    names = [line[6:].split(":")[0] for line in lines]
    assert names == ["python", "torch", "bitsandbytes", "gpu memory", "model smollm2", "model remote", "remote remote",
                     "discord token", "discord message content intent", "slack token", "slack scopes"]
    assert "remote remote: http://127.0.0.1:" in "\n".join(lines) and "serves llama-3.1-8b" in "\n".join(lines)
    assert "ok    discord token: valid: bot modelbot" in lines[7]
    assert lines[-1] == f"ok    slack scopes: all {len(manifest_bot_scopes())} the manifest asks for"


def test_a_wrong_discord_token_is_one_failing_line_naming_the_fix(tmp_path):
    code, lines = doctor_against_platforms(tmp_path, discord_token="a-token-that-was-reset")
    assert code == 1
    assert failing(lines) == ["fail  discord token: Discord refused it (401 Unauthorized) — the token is wrong: "
                              "reset it in the developer portal (Bot → Reset Token) and set DISCORD_TOKEN"]
    assert "a-token-that-was-reset" not in "\n".join(lines)


def test_a_wrong_discord_token_through_the_cli(tmp_path):
    """The real command in a subprocess: exit 1, the one failing line on stdout, no token anywhere."""
    async def run():
        async with platforms() as (discord_emu, slack_emu), OpenAIServer("m") as server:
            config = write_config(tmp_path, [remote_model("r", f"{server.http_base}/v1")],
                                  **sections(discord_emu, slack_emu, discord_token="a-token-that-was-reset"))
            process = await asyncio.create_subprocess_exec(
                *cli("doctor", "--config", str(config)), env=cli_env(),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
            return process.returncode, stdout.decode(), stderr.decode(), slack_emu.bot_token

    code, stdout, stderr, slack_token = asyncio.run(run())
    assert code == 1 and stderr == ""
    lines = stdout.splitlines()
    assert failing(lines) == ["fail  discord token: Discord refused it (401 Unauthorized) — the token is wrong: "
                              "reset it in the developer portal (Bot → Reset Token) and set DISCORD_TOKEN"]
    assert "ok    slack scopes: all" in stdout and "ok    remote r: " in stdout
    for secret in ("a-token-that-was-reset", slack_token):
        assert secret not in stdout


def test_message_content_intent_off_is_one_failing_line(tmp_path):
    async def run():
        async with platforms(discord={"message_content_intent": False}) as (discord_emu, slack_emu):
            config = write_config(tmp_path, [remote_model("r", f"http://127.0.0.1:{closed_port()}/v1")],
                                  **sections(discord_emu, slack_emu))
            return await doctor(config)

    code, lines = asyncio.run(run())
    assert code == 1
    intent = [line for line in failing(lines) if "discord" in line]
    assert intent == ["fail  discord message content intent: off: the bot would see mentions without their text — "
                      "developer portal → your application → Bot → Privileged Gateway Intents: turn on Message "
                      "Content Intent"]


def test_a_slack_token_without_files_write_is_one_failing_line_naming_it(tmp_path):
    granted = tuple(scope for scope in DEFAULT_BOT_SCOPES if scope != "files:write")
    code, lines = doctor_against_platforms(tmp_path, slack={"scopes": granted})
    assert code == 1
    assert failing(lines) == ["fail  slack scope files:write: missing from the bot token — add files:write under "
                              "OAuth & Permissions → Bot Token Scopes (or paste docs/slack-manifest.yaml), then "
                              "reinstall the app after adding it"]
    assert "ok    slack token: valid: bot modelbot in Emulated" in lines


def test_a_wrong_slack_token_is_refused(tmp_path):
    code, lines = doctor_against_platforms(tmp_path, slack_token="xoxb-not-the-token")
    assert code == 1
    assert failing(lines) == ["fail  slack token: Slack refused it (invalid_auth) — the token is wrong: copy the Bot "
                              "User OAuth Token (xoxb-…) from OAuth & Permissions and set SLACK_BOT_TOKEN"]
    assert "xoxb-not-the-token" not in "\n".join(lines)


def test_model_files_missing_or_incomplete_fail_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")
    models = [smollm2(), {"name": "ghost", "source": str(tmp_path / "no-such-folder")},
              {"name": "half", "source": str(incomplete)},
              {"name": "uncached", "source": "modelbot-tests/not-downloaded"}]
    config = write_config(tmp_path, models)
    started = time.perf_counter()
    code, lines = asyncio.run(doctor(config))
    assert code == 1
    assert failing(lines) == [
        f"fail  model ghost: model directory {tmp_path / 'no-such-folder'} does not exist — fix its source in the "
        "config, or put the files there",
        f"fail  model half: {incomplete} has no tokenizer files (tokenizer.json, tokenizer.model, "
        "tokenizer_config.json, vocab.json) — point source at a transformers checkpoint folder (config.json, "
        "tokenizer files, *.safetensors)",
        "fail  model uncached: modelbot-tests/not-downloaded is not in the Hugging Face cache and HF_HUB_OFFLINE is "
        "set — download it once where there is network (hf download modelbot-tests/not-downloaded), or unset "
        "HF_HUB_OFFLINE",
    ]
    assert "ok    model smollm2: GGUF SmolLM2-135M-Instruct.Q4_1.gguf" in "\n".join(lines)
    assert "ok    torch: " in "\n".join(lines) and "device: cpu, as configured" in "\n".join(lines)
    assert time.perf_counter() - started < 60  # no hub retries: torch's import is most of it


def test_a_hub_id_without_network_is_one_quick_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from bot.doctor.models import source_check

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # a hub that is down

    settings = load_settings(write_config(tmp_path, [{"name": "hub", "source": "modelbot-tests/not-downloaded"}]))
    started = time.perf_counter()
    check = source_check(settings.models[0], settings.cache_dir)
    assert time.perf_counter() - started < 5  # transformers' path retried for 50 s
    assert check.status == FAIL and check.name == "model hub"
    assert "not in the Hugging Face cache and the hub is unreachable" in check.detail


def test_a_remote_engine_on_a_closed_port_fails_fast(tmp_path):
    port = closed_port()
    settings = load_settings(write_config(tmp_path, [remote_model("far", f"http://127.0.0.1:{port}/v1")]))

    async def run():
        started = time.perf_counter()
        found = await remote_checks(settings.models[0])
        return found, time.perf_counter() - started

    found, seconds = asyncio.run(run())
    assert [check.status for check in found] == [FAIL]
    assert found[0].line().startswith(f"fail  remote far: http://127.0.0.1:{port}/v1: unreachable")
    assert "start the server, or fix base_url" in found[0].line()
    assert seconds < 3


def test_remote_engine_wrong_key_and_wrong_served_model(tmp_path):
    async def run():
        async with OpenAIServer("llama-3.1-8b", api_key="right-key") as server:
            base = f"{server.http_base}/v1"
            settings = load_settings(write_config(tmp_path, [
                remote_model("keyed", base, api_key="wrong-key"),
                remote_model("named", base, api_key="right-key", served_model="llama-3.1-70b")]))
            return [check.line() for spec in settings.models for check in await remote_checks(spec)]

    keyed, named = asyncio.run(run())
    assert keyed.startswith("fail  remote keyed: ") and "refused the api_key" in keyed and "wrong-key" not in keyed
    assert named.endswith("serves llama-3.1-8b, not llama-3.1-70b — set served_model to one of them, or start the "
                          "server with --served-model-name")


# -- the GPU decisions, with torch's answers given (the CPU machines running these tests have no GPU) --

def _cuda_probe(free_gib: float) -> TorchProbe:
    return TorchProbe(version="2.13.0+cu128", cuda_build="12.8", device="cuda", cuda_devices=1, gpu_name="a GPU",
                      free_bytes=int(free_gib * 2**30), total_bytes=int(free_gib * 2**30))


def test_nf4_on_a_gpu_without_working_bitsandbytes_kernels_fails(tmp_path, monkeypatch):
    import bot.doctor.machine

    monkeypatch.setattr(bot.doctor.machine, "try_bitsandbytes",
                        lambda device, modes: f"bitsandbytes' kernels fail on {device}: no kernel image")
    settings = load_settings(write_config(tmp_path, [smollm2("auto-on-gpu"), smollm2("full", quantization="none")]))
    check = bitsandbytes_check(_cuda_probe(80), settings.models)
    assert check.status == FAIL
    assert check.detail == "bitsandbytes' kernels fail on cuda: no kernel image; needed by auto-on-gpu (nf4)"
    assert "quantization: none" in check.fix
    assert bitsandbytes_check(TorchProbe(version="2.13.0+cpu"), settings.models).status == OK  # on a CPU: not needed


def test_free_gpu_memory_against_each_models_footprint(tmp_path):
    """The footprint comes from the safetensors header (parameter count) and the worker's bytes
    per parameter, as the residency estimates it; the weights themselves are never read."""
    checkpoint = tmp_path / "big-model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    header = json.dumps({"model.weight": {"dtype": "BF16", "shape": [100_000, 100_000], "data_offsets": [0, 0]}})
    (checkpoint / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    settings = load_settings(write_config(tmp_path, [{"name": "big", "source": str(checkpoint)},
                                                     {"name": "big-bf16", "source": str(checkpoint),
                                                      "quantization": "none"}]))
    small_gpu = [check.line() for check in memory_checks(_cuda_probe(12), settings.models, settings)]
    assert small_gpu == [
        "ok    gpu memory big: about 6.5 GiB in nf4, 12.0 GiB free on cuda",
        "fail  gpu memory big-bf16: about 18.6 GiB in none, 12.0 GiB free on cuda — use quantization: nf4, pick a "
        "smaller model, or free the GPU (nvidia-smi shows who holds it)",
    ]
    on_cpu = memory_checks(TorchProbe(version="2.13.0+cpu"), settings.models, settings)
    assert [check.line() for check in on_cpu] == ["ok    gpu memory: skipped: models run on the CPU"]
