"""Each model's files (local, in the Hugging Face cache, or on the hub) and remote engines."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from bot.config import ModelSpec
from bot.doctor.report import Check, FAIL, first_line, HTTP_TIMEOUT, OK

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")

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
    if hub_cached(repo_id, "config.json"):
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
                                 f"({first_line(exc)})",
                     "download it where there is network (hf download, then copy HF_HOME), or point source at a "
                     "local folder")
    return Check(OK, name, f"{repo_id} on the hub, downloaded on its first use")


def hub_cached(repo_id: str, filename: str) -> str | None:
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
                why = f": {first_line(cause)}" if cause is not None and str(cause).strip() else ""
                found.append(Check(FAIL, name, f"{base_url}: {first_line(reason)}{why}",
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


