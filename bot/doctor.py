"""`modelbot doctor`: what a deployment needs, checked one line at a time.

Each check prints ``ok|warn|fail  <check>: <detail> — <what to do>``; the exit status is 1
when any check failed. Python, torch and CUDA, bitsandbytes' kernels, free GPU memory against
each local model's estimated footprint, each model's files (local, in the Hugging Face cache,
or on the hub), remote engines (GET /models), the Discord token and its Message Content
intent, and the Slack token and its scopes against docs/slack-manifest.yaml. Network checks
use a short timeout and no retries; tokens are never printed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator, TextIO

from bot.config import ConfigError, ModelSpec, Settings

OK, WARN, FAIL = "ok", "warn", "fail"
HTTP_TIMEOUT = 5.0  # seconds for each network check; nothing is retried
MIN_PYTHON = (3, 11)
# Discord application flags: the portal's Message Content switch (verified / unverified apps)
GATEWAY_MESSAGE_CONTENT, GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 18, 1 << 19
SLACK_MANIFEST = Path(__file__).resolve().parent.parent / "docs" / "slack-manifest.yaml"
BF16_BYTES = 2  # what an unquantized model takes per parameter on a GPU (load_recipe: bf16)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


@dataclass(frozen=True)
class Check:
    status: str  # ok | warn | fail
    name: str
    detail: str
    fix: str = ""  # what to do; empty for ok

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return f"{text} — {self.fix}" if self.fix else text


async def cmd_doctor(settings: Settings, args: Any) -> int:
    return await run_doctor(settings, sys.stdout)


async def run_doctor(settings: Settings, out: TextIO) -> int:
    """Print every check as it completes; 1 if any failed, else 0."""
    failed = False
    async for check in checks(settings):
        print(check.line(), file=out, flush=True)
        failed |= check.status == FAIL
    return 1 if failed else 0


async def checks(settings: Settings) -> AsyncIterator[Check]:
    yield python_check()
    local = [spec for spec in settings.models if spec.engine == "local"]
    if local:
        gpu = await asyncio.to_thread(probe_torch, settings.device)
        yield torch_check(gpu, settings.device)
        if gpu.error is None:
            yield await asyncio.to_thread(bitsandbytes_check, gpu, local)
            for check in await asyncio.to_thread(memory_checks, gpu, local, settings):
                yield check
    else:
        yield Check(OK, "torch", "not needed here: every model runs on a remote server")
    for spec in settings.models:
        yield await asyncio.to_thread(source_check, spec, settings.cache_dir)
    for spec in settings.models:
        if spec.engine == "openai":
            for check in await remote_checks(spec):
                yield check
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as session:
        for check in await discord_checks(session, settings.sections.get("discord", {})):
            yield check
        for check in await slack_checks(session, settings.sections.get("slack", {})):
            yield check


# -- Python, torch, CUDA, bitsandbytes ----------------------------------------------------------

def python_check() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Check(FAIL, "python", f"{version} ({sys.executable})",
                     f"modelbot needs Python {'.'.join(map(str, MIN_PYTHON))} or newer: recreate the virtualenv with it")
    return Check(OK, "python", f"{version} ({sys.executable})")


@dataclass
class TorchProbe:
    """What torch says about the device the models would run on."""

    version: str = ""
    cuda_build: str | None = None  # torch.version.cuda; None: a CPU-only build
    device: str = "cpu"  # what `device: auto` resolves to
    cuda_devices: int = 0
    gpu_name: str = ""
    free_bytes: int = 0
    total_bytes: int = 0
    error: str | None = None  # torch missing or broken, or the configured GPU absent


def probe_torch(setting: str) -> TorchProbe:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is the finding
        return TorchProbe(error=f"cannot import torch ({_first_line(exc)})")
    probe = TorchProbe(version=torch.__version__, cuda_build=torch.version.cuda)
    try:
        probe.cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # noqa: BLE001 - a driver mismatch raises here
        probe.error = f"CUDA is broken: {_first_line(exc)}"
        return probe
    probe.device = setting if setting != "auto" else ("cuda" if probe.cuda_devices else "cpu")
    if probe.device.startswith("cuda"):
        index = int(probe.device.partition(":")[2] or 0)
        if index >= probe.cuda_devices:
            probe.error = (f"device: {setting} but torch sees {probe.cuda_devices} CUDA GPU(s)"
                           + ("" if probe.cuda_build else " (this torch is a CPU-only build)"))
            return probe
        try:
            probe.gpu_name = torch.cuda.get_device_name(index)
            probe.free_bytes, probe.total_bytes = (int(n) for n in torch.cuda.mem_get_info(index))
        except Exception as exc:  # noqa: BLE001
            probe.error = f"CUDA device {index} does not answer: {_first_line(exc)}"
    return probe


def torch_check(probe: TorchProbe, setting: str) -> Check:
    if probe.error is not None:
        fix = ("install torch's CUDA build and the NVIDIA driver (scripts/setup picks the build when nvidia-smi "
               "works), or set device: cpu") if probe.version else "reinstall modelbot in its virtualenv (pip install -e .)"
        return Check(FAIL, "torch", probe.error + (f"; torch {probe.version}" if probe.version else ""), fix)
    build = f"CUDA {probe.cuda_build}" if probe.cuda_build else "CPU-only build"
    if probe.device.startswith("cuda"):
        return Check(OK, "torch", f"{probe.version} ({build}); {probe.device}: {probe.gpu_name}, "
                                  f"{_gib(probe.free_bytes)} of {_gib(probe.total_bytes)} free")
    if setting == "cpu":
        return Check(OK, "torch", f"{probe.version} ({build}); device: cpu, as configured")
    return Check(WARN, "torch", f"{probe.version} ({build}): no CUDA GPU, models run on the CPU only",
                 "on a machine with an NVIDIA GPU install torch's CUDA build (scripts/setup); "
                 "set device: cpu to make CPU-only intended")


def needs_bitsandbytes(spec: ModelSpec, device: str) -> str | None:
    """The bitsandbytes mode a local model loads with on `device` (load_recipe's rule), or None."""
    if spec.quantization == "auto":
        return "nf4" if device.startswith("cuda") else None
    return spec.quantization if spec.quantization in ("nf4", "int8") else None


def bitsandbytes_check(probe: TorchProbe, local: list[ModelSpec]) -> Check:
    wanted = {spec.name: mode for spec in local if (mode := needs_bitsandbytes(spec, probe.device))}
    if not wanted:
        try:
            from importlib.metadata import PackageNotFoundError, version

            installed = version("bitsandbytes")
        except PackageNotFoundError:
            return Check(OK, "bitsandbytes", "not installed; no model here loads in nf4 or int8")
        return Check(OK, "bitsandbytes", f"{installed}; kernels not tried: no model here loads in nf4 or int8 "
                                         f"on {probe.device}")
    users = ", ".join(f"{name} ({mode})" for name, mode in wanted.items())
    error = try_bitsandbytes(probe.device, set(wanted.values()))
    if error is None:
        return Check(OK, "bitsandbytes", f"{_bnb_version()}: kernels work on {probe.device} (for {users})")
    fix = ("install a bitsandbytes build for this CUDA (pip install -U bitsandbytes), "
           "or set quantization: none on these models" if probe.device.startswith("cuda")
           else "pip install -U bitsandbytes, or set quantization: auto (full precision on a CPU)")
    return Check(FAIL, "bitsandbytes", f"{error}; needed by {users}", fix)


def try_bitsandbytes(device: str, modes: set[str]) -> str | None:
    """Quantize a small tensor the way NF4 / int8 loading does; None if it worked, else why not."""
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its optional-kernel notices are not this check's finding
    try:
        import bitsandbytes.functional as functional
        import torch

        weights = torch.randn(64, 64, device=device, dtype=torch.bfloat16 if device != "cpu" else torch.float32)
        if "nf4" in modes:
            packed, state = functional.quantize_4bit(weights, quant_type="nf4")
            if not torch.allclose(functional.dequantize_4bit(packed, state), weights, atol=0.5, rtol=0.5):
                return "bitsandbytes' 4-bit kernels give wrong results"
        if "int8" in modes:
            functional.int8_vectorwise_quant(weights.to(torch.float16 if device != "cpu" else torch.float32))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - a missing library, a kernel not built for this GPU, ...
        return f"bitsandbytes' kernels fail on {device}: {_first_line(exc)}"
    finally:
        quiet.setLevel(level)
    return None


def _bnb_version() -> str:
    import bitsandbytes

    return str(bitsandbytes.__version__)


# -- GPU memory against each local model's footprint -------------------------------------------

def memory_checks(probe: TorchProbe, local: list[ModelSpec], settings: Settings) -> list[Check]:
    if not probe.device.startswith("cuda"):
        return [Check(OK, "gpu memory", "skipped: models run on the CPU")]
    room = probe.free_bytes
    where = f"{_gib(room)} free on {probe.device}"
    budget = settings.worker.memory_budget
    if settings.worker.memory_budget_fraction:
        budget = int(settings.worker.memory_budget_fraction * probe.total_bytes)
    if budget is not None and budget < room:
        room, where = budget, f"worker.memory_budget {_gib(budget)}"
    return [_memory_check(spec, probe.device, room, where, settings.cache_dir) for spec in local]


def estimate_footprint(spec: ModelSpec, device: str, cache_dir: Path) -> tuple[int, str] | None:
    """(bytes, mode) once loaded: the safetensors headers' parameter count times the worker's
    bytes per parameter for the mode; None when the weights are not on this machine yet."""
    from bot.worker.residency import BYTES_PER_PARAMETER, _count_parameters

    directory = checkpoint_directory(spec, cache_dir)
    parameters = _count_parameters(directory) if directory is not None else 0
    if not parameters:
        return None
    mode = needs_bitsandbytes(spec, device) or "none"
    return int(parameters * BYTES_PER_PARAMETER.get(mode, BF16_BYTES)), mode


def _memory_check(spec: ModelSpec, device: str, room: int, where: str, cache_dir: Path) -> Check:
    name = f"gpu memory {spec.name}"
    estimate = estimate_footprint(spec, device, cache_dir)
    if estimate is None:
        return Check(OK, name, "size known after its first load (weights not on this machine yet)")
    size, mode = estimate
    detail = f"about {_gib(size)} in {mode}, {where}"
    if size > room:
        smaller = "use quantization: nf4, " if mode != "nf4" else ""
        return Check(FAIL, name, detail, f"{smaller}pick a smaller model, or free the GPU (nvidia-smi shows who holds it)")
    if size > 0.9 * room:
        return Check(WARN, name, detail + ": little room left for the KV cache",
                     "long conversations and batches may run out of memory; free some or use a smaller model")
    return Check(OK, name, detail)


def checkpoint_directory(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """The folder holding the model's config.json (and weights) on this machine, if any."""
    from bot.sources import SourceError, checkpoint_location, resolve_source

    try:
        resolved = resolve_source(spec.source)
    except SourceError:
        return None
    if resolved.kind == "hub":
        cached = _hub_cached(resolved.location, "config.json")
        return Path(cached).parent if cached else None
    location = checkpoint_location(resolved, cache_dir)
    return Path(location) if location else None


# -- each model's files ---------------------------------------------------------------------------

def source_check(spec: ModelSpec, cache_dir: Path) -> Check:
    from bot.sources import SourceError, checkpoint_location, resolve_source

    name = f"model {spec.name}"
    if not spec.source:
        return Check(OK, name, f"no tokenizer needed (api: chat on {spec.engine}, family {spec.family})")
    try:
        resolved = resolve_source(spec.source)
    except SourceError as exc:
        return Check(FAIL, name, str(exc), "fix its source in the config, or put the files there")
    needs_weights = spec.engine == "local"
    if resolved.kind == "dir":
        return _directory_check(name, Path(resolved.location), needs_weights)
    if resolved.kind == "gguf":
        with open(resolved.location, "rb") as handle:
            if handle.read(4) != b"GGUF":
                return Check(FAIL, name, f"{resolved.location} is not a GGUF file", "point source at a .gguf model file")
        converted = checkpoint_location(resolved, cache_dir)
        return Check(OK, name, f"GGUF {resolved.gguf_name}" + (", converted in the cache" if converted
                                                                else ", converted once on its first load"))
    return _hub_check(name, resolved.location)


def _directory_check(name: str, directory: Path, needs_weights: bool) -> Check:
    fix = "point source at a transformers checkpoint folder (config.json, tokenizer files, *.safetensors)"
    if not (directory / "config.json").is_file():
        return Check(FAIL, name, f"{directory} has no config.json", fix)
    if not any((directory / file).is_file() for file in TOKENIZER_FILES):
        return Check(FAIL, name, f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES)})", fix)
    if needs_weights and not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        return Check(FAIL, name, f"{directory} has no weights (*.safetensors)", fix)
    return Check(OK, name, f"local checkpoint {directory}")


def _hub_check(name: str, repo_id: str) -> Check:
    if _hub_cached(repo_id, "config.json"):
        return Check(OK, name, f"{repo_id} in the Hugging Face cache")
    if _offline():
        return Check(FAIL, name, f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                     f"download it once where there is network (hf download {repo_id}), or unset HF_HUB_OFFLINE")
    from huggingface_hub import HfApi, auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo_id, timeout=HTTP_TIMEOUT)
        if info.gated:
            auth_check(repo_id)
    except GatedRepoError:
        return Check(FAIL, name, f"{repo_id} is gated and this machine has no access",
                     "accept the licence on the model's hub page and set HF_TOKEN to a token of that account")
    except RepositoryNotFoundError:
        return Check(FAIL, name, f"{repo_id} is not on the hub (or is private)",
                     "check the id; a private model needs HF_TOKEN")
    except Exception as exc:  # noqa: BLE001 - no network, DNS, proxy, timeout: one line, no retries
        return Check(FAIL, name, f"{repo_id} is not in the Hugging Face cache and the hub is unreachable "
                                 f"({_first_line(exc)})",
                     "download it where there is network (hf download, then copy HF_HOME), or point source at a "
                     "local folder")
    return Check(OK, name, f"{repo_id} on the hub, downloaded on its first use")


def _hub_cached(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - an id the hub would refuse is not cached either
        return None
    return found if isinstance(found, str) else None


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# -- remote engines -----------------------------------------------------------------------------

async def remote_checks(spec: ModelSpec) -> list[Check]:
    """GET {base_url}/models on each replica, through the engine's own client (no retries)."""
    from bot.engines.openai.client import RequestRejected, check_health, classify, make_client

    options = replace(spec.engine_options, request_timeout=HTTP_TIMEOUT)
    found = []
    for base_url in options.base_urls:
        name = f"remote {spec.name}"
        client = make_client(base_url, options)
        try:
            served = await check_health(client)
        except Exception as exc:  # noqa: BLE001 - classified below
            reason = classify(exc)
            if isinstance(reason, RequestRejected) and reason.status in (401, 403):
                found.append(Check(FAIL, name, f"{base_url} refused the api_key ({reason})",
                                   "set the api_key the server was started with (--api-key)"))
            else:
                cause = exc.__cause__ or exc.__context__
                why = f": {_first_line(cause)}" if cause is not None and str(cause).strip() else ""
                found.append(Check(FAIL, name, f"{base_url}: {_first_line(reason)}{why}",
                                   "start the server, or fix base_url (and the firewall between the two machines)"))
            continue
        finally:
            await client.close()
        wanted = options.served_model
        if wanted and wanted not in served:
            found.append(Check(FAIL, name, f"{base_url} serves {', '.join(served) or 'nothing'}, not {wanted}",
                               "set served_model to one of them, or start the server with --served-model-name"))
        else:
            found.append(Check(OK, name, f"{base_url} serves {wanted or (served[0] if served else 'nothing yet')}"))
    return found


# -- Discord ------------------------------------------------------------------------------------

async def discord_checks(session: Any, section: dict) -> list[Check]:
    from bot.frontends.discord_settings import parse_discord_settings

    try:
        settings = parse_discord_settings(section)
    except ConfigError as exc:
        return [Check(FAIL, "discord", f"config error: {exc}", "fix the discord: section")]
    if not settings.enabled and not settings.token:
        return [Check(OK, "discord", "not enabled")]
    if not settings.token:
        return [Check(FAIL, "discord token", "empty",
                      "copy the bot's token (developer portal → Bot → Reset Token) into DISCORD_TOKEN")]
    headers = {"Authorization": f"Bot {settings.token}"}
    try:
        status, user = await _get_json(session, f"{settings.api_base}/users/@me", headers)
        if status == 401:
            return [Check(FAIL, "discord token", "Discord refused it (401 Unauthorized)",
                          "the token is wrong: reset it in the developer portal (Bot → Reset Token) and set DISCORD_TOKEN")]
        if status != 200:
            return [Check(FAIL, "discord token", f"GET /users/@me answered {status}",
                          f"check discord.api_base ({settings.api_base}) and Discord's status page")]
        found = [Check(OK, "discord token", f"valid: bot {user.get('username')} ({user.get('id')})")]
        status, application = await _get_json(session, f"{settings.api_base}/applications/@me", headers)
    except Exception as exc:  # noqa: BLE001 - network errors, one line
        return [Check(FAIL, "discord", f"cannot reach {settings.api_base} ({_network_reason(exc)})",
                      "check the network and discord.api_base")]
    if status != 200:
        found.append(Check(FAIL, "discord message content intent", f"GET /applications/@me answered {status}",
                           "check discord.api_base"))
    elif int(application.get("flags") or 0) & (GATEWAY_MESSAGE_CONTENT | GATEWAY_MESSAGE_CONTENT_LIMITED):
        found.append(Check(OK, "discord message content intent", "enabled"))
    else:
        found.append(Check(FAIL, "discord message content intent", "off: the bot would see mentions without their text",
                           "developer portal → your application → Bot → Privileged Gateway Intents: turn on "
                           "Message Content Intent"))
    return found


# -- Slack --------------------------------------------------------------------------------------

async def slack_checks(session: Any, section: dict) -> list[Check]:
    from bot.frontends.slack_settings import check_credentials, parse_slack_settings

    try:
        settings = parse_slack_settings(section)
    except ConfigError as exc:
        return [Check(FAIL, "slack", f"config error: {exc}", "fix the slack: section")]
    if not settings.enabled and not settings.bot_token:
        return [Check(OK, "slack", "not enabled")]
    found = []
    if settings.enabled:
        try:
            check_credentials(settings)
        except ConfigError as exc:
            found.append(Check(FAIL, "slack credentials", str(exc), "set them in the environment, never in the file"))
    if not settings.bot_token:
        return found
    try:
        async with session.post(f"{settings.api_base}auth.test",
                                headers={"Authorization": f"Bearer {settings.bot_token}"}) as response:
            body = await response.json(content_type=None) if response.status == 200 else {}
            granted = response.headers.get("x-oauth-scopes")
            status = response.status
    except Exception as exc:  # noqa: BLE001 - network errors, one line
        return [*found, Check(FAIL, "slack", f"cannot reach {settings.api_base} ({_network_reason(exc)})",
                              "check the network and slack.api_base")]
    if status != 200 or not isinstance(body, dict):
        return [*found, Check(FAIL, "slack token", f"auth.test answered HTTP {status}", "check slack.api_base")]
    if not body.get("ok"):
        return [*found, Check(FAIL, "slack token", f"Slack refused it ({body.get('error')})",
                              "the token is wrong: copy the Bot User OAuth Token (xoxb-…) from OAuth & Permissions "
                              "and set SLACK_BOT_TOKEN")]
    found.append(Check(OK, "slack token", f"valid: bot {body.get('user')} in {body.get('team')}"))
    return found + _scope_checks(granted)


def _scope_checks(granted: str | None) -> list[Check]:
    try:
        wanted = manifest_bot_scopes()
    except (OSError, ValueError) as exc:
        return [Check(WARN, "slack scopes", f"not compared: {exc}", "compare them with docs/slack-manifest.yaml by hand")]
    if granted is None:
        return [Check(WARN, "slack scopes", "Slack did not report the token's scopes (no x-oauth-scopes header)",
                      f"compare them by hand with {', '.join(wanted)}")]
    have = {scope.strip() for scope in granted.split(",") if scope.strip()}
    missing = [scope for scope in wanted if scope not in have]
    if not missing:
        return [Check(OK, "slack scopes", f"all {len(wanted)} the manifest asks for")]
    return [Check(FAIL, f"slack scope {scope}", "missing from the bot token",
                  f"add {scope} under OAuth & Permissions → Bot Token Scopes (or paste docs/slack-manifest.yaml), "
                  "then reinstall the app after adding it")
            for scope in missing]


def manifest_bot_scopes(path: Path = SLACK_MANIFEST) -> list[str]:
    import yaml

    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        scopes = manifest["oauth_config"]["scopes"]["bot"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} has no oauth_config.scopes.bot") from None
    return [str(scope) for scope in scopes]


# -- helpers ------------------------------------------------------------------------------------

async def _get_json(session: Any, url: str, headers: dict) -> tuple[int, dict]:
    async with session.get(url, headers=headers) as response:
        if response.status != 200:
            return response.status, {}
        body = await response.json(content_type=None)
        return response.status, body if isinstance(body, dict) else {}


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {HTTP_TIMEOUT:g} s"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
