"""Loading weights: the local engine's job alone (a remote engine never reads weights).

`ModelLoader` turns a config entry into a `LoadedModel` with the family's recipe (NF4 on a
GPU by default), on the worker's thread. Prompts and tokenizers stay with the catalog,
which every engine shares.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from bot.backend import FamilyBackend, LoadRecipe
from bot.catalog import ModelCatalog, explained_load_errors
from bot.config import ModelSpec
from bot.sources import convert_gguf

log = logging.getLogger(__name__)


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


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelLoader:
    """Weights for the catalog's models, on the configured device (worker thread only)."""

    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog
        self._device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.catalog.settings.device)
        return self._device

    def checkpoint(self, spec: ModelSpec, progress: Callable[[str], None] = log.info) -> str:
        """A location from_pretrained can load (converting a GGUF source once)."""
        resolved = self.catalog.resolved(spec)
        if resolved.kind == "gguf":
            return convert_gguf(resolved, self.catalog.settings.cache_dir, progress)
        return resolved.location

    def load(self, spec: ModelSpec, progress: Callable[[str], None] = log.info) -> LoadedModel:
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM

        started = time.monotonic()
        location = self.checkpoint(spec, progress)
        info = self.catalog.tokenizer(spec)
        backend = self.catalog.backend_for(spec, info.model_type)
        recipe = backend.load_recipe(spec.quantization, self.device, info.model_type)
        precision = "full precision" if recipe.quantization == "none" else recipe.quantization.upper()
        progress(f"loading {spec.name} ({backend.name} plugin, {precision}) on {self.device}")
        kwargs = dict(recipe.kwargs, trust_remote_code=spec.trust_remote_code)
        if recipe.quantization_config is not None:
            kwargs["quantization_config"] = recipe.quantization_config
        kwargs["device_map"] = self.device
        with explained_load_errors(spec, self.catalog.resolved(spec)):
            try:
                model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
            except SafetensorError as exc:  # a damaged weights file: say which model, like a missing one
                raise ValueError(f"its weights cannot be read ({exc})") from exc
        model.eval()
        backend.prepare_model(model, info.model_type)
        loaded = LoadedModel(
            spec=spec, backend=backend, model=model, tokenizer=info.tokenizer, model_type=info.model_type,
            recipe=recipe, device=self.device, load_seconds=time.monotonic() - started,
        )
        progress(f"loaded {spec.name} in {loaded.load_seconds:.1f} s, {loaded.footprint_bytes() / 1e6:.0f} MB")
        return loaded
