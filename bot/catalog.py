"""The configured models: which plugin serves each, their tokenizers, prompts and loading.

This is the one place that joins config entries (ModelSpec), family backends and the
files on disk or on the hub. Loading a model happens here too, but is only ever called
from the worker's thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bot.backend import BackendError, FamilyBackend, LoadRecipe, Prompt
from bot.config import ModelSpec, Settings
from bot.plugins import BackendRegistry
from bot.sources import ResolvedSource, SourceError, checkpoint_location, convert_gguf, resolve_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerInfo:
    tokenizer: Any
    model_type: str | None
    context_length: int  # prompt + reply tokens the model was trained for


class UnknownModel(Exception):
    def __init__(self, name: str, valid: list[str]):
        self.name, self.valid = name, valid
        super().__init__(f"unknown model {name!r}; configured models: {', '.join(valid)}")


@dataclass
class LoadedModel:
    spec: ModelSpec
    backend: FamilyBackend
    model: Any
    tokenizer: Any
    model_type: str | None
    recipe: LoadRecipe
    device: str
    load_seconds: float
    _footprint: int | None = None

    def footprint_bytes(self) -> int:
        """Weights and buffers (measured once: the model does not grow after loading)."""
        if self._footprint is None:
            self._footprint = int(self.model.get_memory_footprint())
        return self._footprint


@contextmanager
def _explained_load_errors(spec: ModelSpec, resolved: ResolvedSource):
    """transformers' file errors, reworded to say which model and where to look."""
    try:
        yield
    except (OSError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = " (check the hub id, the network, and HF_TOKEN for gated models)" if resolved.kind == "hub" else ""
        raise SourceError(f"could not load model {spec.name} from {spec.source}: {detail}{hint}") from exc


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelCatalog:
    def __init__(self, settings: Settings, registry: BackendRegistry):
        self.settings = settings
        self.registry = registry
        self._tokenizers: dict[str, TokenizerInfo] = {}
        # Encoding toggles state on a shared fast tokenizer; prompts are built one at a time.
        self._prompt_lock = threading.Lock()
        # Two first messages at once would load a tokenizer twice, and transformers' lazy
        # imports are not thread-safe ("cannot import name AutoConfig"): one load at a time.
        self._tokenizer_lock = threading.RLock()
        self._device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.settings.device)
        return self._device

    def spec(self, name: str | None) -> ModelSpec:
        name = name or self.settings.default_model
        spec = self.settings.model(name)
        if spec is None:
            raise UnknownModel(name, self.settings.model_names)
        return spec

    # -- which plugin -----------------------------------------------------------------------
    def backend_for(self, spec: ModelSpec, model_type: str | None = None) -> FamilyBackend:
        """The config's `family:` if set, else the plugin recognising model_type or the source."""
        if spec.family:
            backend = self.registry.get(spec.family)
            if backend is None:
                raise BackendError(
                    f"model {spec.name}: family {spec.family!r} has no plugin "
                    f"(loaded: {', '.join(self.registry.backends) or 'none'})"
                )
            return backend
        backend = self.registry.find(spec.model_type or model_type, spec.source)
        if backend is None:
            raise BackendError(
                f"model {spec.name}: no plugin recognises model_type {spec.model_type or model_type!r} "
                f"from {spec.source}; set `family:` in its config entry"
            )
        return backend

    def guess_backend_name(self, spec: ModelSpec) -> str:
        """For listings: the plugin name without loading anything (a local config.json at most)."""
        try:
            return self.backend_for(spec, self._local_model_type(spec)).name
        except (BackendError, SourceError):
            return "?"

    def _local_model_type(self, spec: ModelSpec) -> str | None:
        if spec.name in self._tokenizers:
            return self._tokenizers[spec.name].model_type
        location = checkpoint_location(self._resolved(spec), self.settings.cache_dir)
        config_file = Path(location, "config.json") if location else None
        if config_file is None or not config_file.is_file():
            return None
        try:
            return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            return None

    # -- files ------------------------------------------------------------------------------
    def _resolved(self, spec: ModelSpec) -> ResolvedSource:
        return resolve_source(spec.source)

    def checkpoint(self, spec: ModelSpec, progress: Callable[[str], None] = log.info) -> str:
        """A location from_pretrained can load (converting a GGUF source once)."""
        resolved = self._resolved(spec)
        if resolved.kind == "gguf":
            return convert_gguf(resolved, self.settings.cache_dir, progress)
        return resolved.location

    def tokenizer(self, spec: ModelSpec) -> TokenizerInfo:
        """The tokenizer, model_type and context length, without loading weights; cached per model."""
        if spec.name in self._tokenizers:
            return self._tokenizers[spec.name]
        with self._tokenizer_lock:
            return self._load_tokenizer(spec)

    def _load_tokenizer(self, spec: ModelSpec) -> TokenizerInfo:
        if spec.name not in self._tokenizers:
            from transformers import AutoConfig, AutoTokenizer

            resolved = self._resolved(spec)
            location = checkpoint_location(resolved, self.settings.cache_dir)
            if location is None:  # an unconverted GGUF: both can be read from the file itself
                args: dict[str, Any] = {"gguf_file": resolved.gguf_name}
                location = resolved.gguf_dir
            else:
                args = {}
            args["trust_remote_code"] = spec.trust_remote_code
            with _explained_load_errors(spec, resolved):
                tokenizer = AutoTokenizer.from_pretrained(location, **args)
                config = AutoConfig.from_pretrained(location, **args)
            context = getattr(config, "max_position_embeddings", None) or 4096
            self._tokenizers[spec.name] = TokenizerInfo(tokenizer, spec.model_type or config.model_type, int(context))
        return self._tokenizers[spec.name]

    def prompt(self, spec: ModelSpec, messages: list[dict]) -> Prompt:
        """Messages -> the exact prompt the family's template gives (blocking: call off the loop)."""
        if spec.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": spec.system_prompt}, *messages]
        with self._prompt_lock:
            info = self.tokenizer(spec)
            backend = self.backend_for(spec, info.model_type)
            return backend.build_prompt(info.tokenizer, messages, info.model_type, self._generation_config(spec))

    def _generation_config(self, spec: ModelSpec) -> Any:
        from transformers import GenerationConfig

        resolved = self._resolved(spec)
        location = checkpoint_location(resolved, self.settings.cache_dir)
        if location is None or not (resolved.kind == "hub" or Path(location, "generation_config.json").is_file()):
            return None
        try:
            return GenerationConfig.from_pretrained(location)
        except (OSError, ValueError):
            return None

    def generation_settings(self, spec: ModelSpec, model_type: str | None, overrides: dict | None = None) -> dict:
        """Family defaults <- the model's config entry <- per-request overrides."""
        settings = {**self.backend_for(spec, model_type).generation_defaults, **spec.generation, **(overrides or {})}
        if not settings.get("do_sample", False):
            for sampling_only in ("temperature", "top_p", "top_k"):
                settings.pop(sampling_only, None)
        return settings

    # -- loading (worker thread only) -------------------------------------------------------
    def load(self, spec: ModelSpec, progress: Callable[[str], None] = log.info) -> LoadedModel:
        from transformers import AutoModelForCausalLM

        started = time.monotonic()
        location = self.checkpoint(spec, progress)
        info = self.tokenizer(spec)
        backend = self.backend_for(spec, info.model_type)
        recipe = backend.load_recipe(spec.quantization, self.device, info.model_type)
        precision = "full precision" if recipe.quantization == "none" else recipe.quantization.upper()
        progress(f"loading {spec.name} ({backend.name} plugin, {precision}) on {self.device}")
        kwargs = dict(recipe.kwargs, trust_remote_code=spec.trust_remote_code)
        if recipe.quantization_config is not None:
            kwargs["quantization_config"] = recipe.quantization_config
        kwargs["device_map"] = self.device
        with _explained_load_errors(spec, self._resolved(spec)):
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        model.eval()
        backend.prepare_model(model, info.model_type)
        loaded = LoadedModel(
            spec=spec, backend=backend, model=model, tokenizer=info.tokenizer, model_type=info.model_type,
            recipe=recipe, device=self.device, load_seconds=time.monotonic() - started,
        )
        progress(f"loaded {spec.name} in {loaded.load_seconds:.1f} s, {loaded.footprint_bytes() / 1e6:.0f} MB")
        return loaded
