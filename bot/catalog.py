"""The configured models: which plugin serves each, their tokenizers and prompts.

This is the one place that joins config entries (ModelSpec), family backends and the
tokenizer files on disk or on the hub. Every engine needs it; loading weights is the
local engine's (bot/worker/loading.py).
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.backend import BackendError, FamilyBackend, Prompt
from bot.config import ModelSpec, Settings
from bot.errors import UserFacingError
from bot.plugins import BackendRegistry
from bot.sources import ResolvedSource, SourceError, checkpoint_location, resolve_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerInfo:
    tokenizer: Any  # None for a chat-API model without a source
    model_type: str | None
    context_length: int  # prompt + reply tokens the model was trained for
    config: Any = None  # transformers' config (architecture, dtype), for /layers without weights


NO_SOURCE_CONTEXT = 8192  # a chat-API model without a source or context_length


class UnknownModel(UserFacingError):
    def __init__(self, name: str, valid: list[str]):
        self.name, self.valid = name, valid
        super().__init__(f"unknown model {name!r}; configured models: {', '.join(valid)}")


@contextmanager
def explained_load_errors(spec: ModelSpec, resolved: ResolvedSource):
    """transformers' file errors, reworded to say which model and where to look."""
    offline = None
    if resolved.kind == "hub":
        from bot.hub_access import offline_unless_hub_reachable

        offline = offline_unless_hub_reachable()
    try:
        yield
    except (OSError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if offline:
            raise SourceError(f"could not load model {spec.name}: {offline} and {spec.source} is not in the local "
                              "cache (download it on a machine with network, or use a local path as source)") from exc
        hint = " (check the hub id, the network, and HF_TOKEN for gated models)" if resolved.kind == "hub" else ""
        raise SourceError(f"could not load model {spec.name} from {spec.source}: {detail}{hint}") from exc


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
        location = checkpoint_location(self.resolved(spec), self.settings.cache_dir)
        config_file = Path(location, "config.json") if location else None
        if config_file is None or not config_file.is_file():
            return None
        try:
            return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            return None

    # -- files ------------------------------------------------------------------------------
    def resolved(self, spec: ModelSpec) -> ResolvedSource:
        return resolve_source(spec.source)

    def tokenizer(self, spec: ModelSpec) -> TokenizerInfo:
        """The tokenizer, model_type and context length, without loading weights; cached per model.
        A model without a source (a chat API's) has no tokenizer: its entry says the rest."""
        if not spec.source:
            return TokenizerInfo(None, spec.model_type, spec.context_length or NO_SOURCE_CONTEXT)
        if spec.name in self._tokenizers:
            return self._tokenizers[spec.name]
        with self._tokenizer_lock:
            return self._load_tokenizer(spec)

    def _load_tokenizer(self, spec: ModelSpec) -> TokenizerInfo:
        if spec.name not in self._tokenizers:
            from transformers import AutoConfig, AutoTokenizer

            resolved = self.resolved(spec)
            location = checkpoint_location(resolved, self.settings.cache_dir)
            if location is None:  # an unconverted GGUF: both can be read from the file itself
                args: dict[str, Any] = {"gguf_file": resolved.gguf_name}
                location = resolved.gguf_dir
            else:
                args = {}
            args["trust_remote_code"] = spec.trust_remote_code
            with explained_load_errors(spec, resolved):
                tokenizer = AutoTokenizer.from_pretrained(location, **args)
                config = AutoConfig.from_pretrained(location, **args)
            context = spec.context_length or getattr(config, "max_position_embeddings", None) or 4096
            self._tokenizers[spec.name] = TokenizerInfo(tokenizer, spec.model_type or config.model_type, int(context),
                                                        config)
        return self._tokenizers[spec.name]

    def prompt(self, spec: ModelSpec, messages: list[dict]) -> Prompt:
        """Messages -> the exact prompt the family's template gives (blocking: call off the loop).
        Without a tokenizer (a chat API's model without a source) only the family's message
        rules apply and the length is estimated."""
        if spec.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": spec.system_prompt}, *messages]
        with self._prompt_lock:
            info = self.tokenizer(spec)
            backend = self.backend_for(spec, info.model_type)
            if info.tokenizer is None:
                normalized = backend.template_messages(messages, info.model_type, None)
                # ~4 characters a token in English text, plus a few template tokens per turn
                estimate = sum(len(m["content"]) // 4 + 8 for m in normalized)
                return Prompt("", [], [], messages=normalized, estimated_tokens=estimate)
            return backend.build_prompt(info.tokenizer, messages, info.model_type, self._generation_config(spec))

    def _generation_config(self, spec: ModelSpec) -> Any:
        from transformers import GenerationConfig

        if not spec.source:
            return None
        resolved = self.resolved(spec)
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
