"""Which models stay loaded: a memory budget, least-recently-used eviction of idle models,
and a check that unloading really gave the memory back.

Only the worker thread calls the methods that load or evict; `snapshot()` may be read from
any thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bot.text import human_bytes
from bot.generation import GenerationFailed
from bot.worker.loading import LoadedModel, ModelLoader
from bot.worker.memory import is_out_of_memory, release_freed_memory, used_bytes

log = logging.getLogger(__name__)

# Bytes per parameter once loaded, to size a model before its first load. NF4 + double
# quant on Llama-3.1-8B measured 5.59 GB for 8.03 B parameters (embeddings stay bf16).
BYTES_PER_PARAMETER = {"nf4": 0.70, "int8": 1.15}


class NoRoomYet(Exception):
    """The budget is held by models with jobs in flight: try again when they finish."""


@dataclass
class Resident:
    loaded: LoadedModel
    footprint: int  # weights, measured after loading
    extra: int = 0  # continuous-batching KV cache and the like, reported by the engine
    last_used: float = 0.0

    @property
    def total(self) -> int:
        return self.footprint + self.extra


@dataclass
class Eviction:
    name: str
    expected_bytes: int
    freed_bytes: int

    @property
    def verified(self) -> bool:
        """Most of what the model held came back (allocators keep a little)."""
        return self.freed_bytes >= 0.5 * self.expected_bytes


class Residency:
    def __init__(self, loader: ModelLoader, budget_bytes: int, max_resident: int,
                 on_evict: Callable[[LoadedModel], None] = lambda loaded: None):
        self.loader = loader
        self.catalog = loader.catalog
        self.budget = budget_bytes
        self.max_resident = max_resident
        self.on_evict = on_evict  # lets the engine stop a model's batching first
        self._resident: OrderedDict[str, Resident] = OrderedDict()  # LRU first
        self._known_sizes: dict[str, int] = {}  # measured footprints of models loaded before
        self.last_eviction: Eviction | None = None
        self.loads = 0  # completed loads, for stats and tests
        self.last_load_at = 0.0  # time.monotonic() of the latest completed load (the engine's swap turns)
        self._loads_by_model: Counter[str] = Counter()
        self._evictions_by_model: Counter[str] = Counter()
        self._snapshot: list[dict[str, Any]] = []
        self._counts: tuple[dict[str, int], dict[str, int]] = ({}, {})

    # -- any thread -------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        return list(self._snapshot)

    def names(self) -> list[str]:
        return [entry["name"] for entry in self._snapshot]

    def loads_by_model(self) -> dict[str, int]:
        """Completed loads per model since start, unloaded models included."""
        return dict(self._counts[0])

    def evictions_by_model(self) -> dict[str, int]:
        """Unloads per model since start (to make room, for keep_alive, at shutdown)."""
        return dict(self._counts[1])

    # -- worker thread ----------------------------------------------------------------------
    def get(self, name: str) -> LoadedModel | None:
        resident = self._resident.get(name)
        if resident is None:
            return None
        resident.last_used = time.time()
        self._resident.move_to_end(name)
        return resident.loaded

    def used(self) -> int:
        return sum(r.total for r in self._resident.values())

    def has_room_for(self, name: str) -> bool:
        """Whether `name` would load beside the resident models without unloading one (a model
        never loaded counts by number only: its size is known after its first load)."""
        if name in self._resident:
            return True
        need = self._known_sizes.get(name, 0)
        return len(self._resident) < self.max_resident and self.used() + need <= self.budget

    def set_extra(self, name: str, extra_bytes: int) -> None:
        if name in self._resident:
            self._resident[name].extra = extra_bytes
            self._publish()

    def ensure(self, name: str, progress: Callable[[str], None], busy: set[str]) -> LoadedModel:
        """The loaded model, loading it (and evicting idle ones to make room) if needed.

        Raises NoRoomYet when only models in `busy` (jobs in flight) stand in the way, and
        GenerationFailed when the model cannot fit or fails to load.
        """
        loaded = self.get(name)
        if loaded is not None:
            return loaded
        spec = self.catalog.spec(name)
        location = self.loader.checkpoint(spec, progress)  # converts a GGUF once, with progress
        need = self._known_sizes.get(name) or self._estimate(spec, location)
        if need > self.budget:
            raise GenerationFailed(
                f"{name} needs about {human_bytes(need)} but the memory budget is {human_bytes(self.budget)} "
                "(worker.memory_budget in the config)"
            )
        self._make_room(need, busy)
        try:
            loaded = self.loader.load(spec, progress)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            # Something else holds the memory (another process, fragmentation): free what we can, once.
            log.warning("out of memory loading %s; unloading every idle model and retrying", name)
            self._make_room(self.budget, busy)
            try:
                loaded = self.loader.load(spec, progress)
            except Exception as retry_exc:
                if is_out_of_memory(retry_exc):
                    raise GenerationFailed(
                        f"not enough memory to load {name} (about {human_bytes(need)} needed); "
                        "try a smaller model or 4-bit quantization"
                    ) from retry_exc
                raise
        self.loads += 1
        self._loads_by_model[name] += 1
        self.last_load_at = time.monotonic()
        resident = Resident(loaded, loaded.footprint_bytes(), last_used=time.time())
        self._known_sizes[name] = resident.footprint
        self._resident[name] = resident
        # the estimate was only an estimate: settle the budget with the measured size
        try:
            self._make_room(0, busy | {name}, adding=False)
        except NoRoomYet:
            log.warning("%s is over the memory budget until the models in use go idle", name)
        self._publish()
        return loaded

    def evict(self, name: str, warn_if_kept: bool = True) -> Eviction:
        resident = self._resident.pop(name)
        self._evictions_by_model[name] += 1
        self._publish()
        before = used_bytes(self.loader.device)  # before its batch (and KV cache) stops: both are expected back
        expected = resident.total
        self.on_evict(resident.loaded)
        log.info("unloading %s (%s)", name, human_bytes(expected))
        resident.loaded.model = None
        del resident
        release_freed_memory()
        freed = before - used_bytes(self.loader.device)
        self.last_eviction = eviction = Eviction(name, expected, freed)
        if not eviction.verified:
            log.log(logging.WARNING if warn_if_kept else logging.DEBUG, "unloading %s gave back only %s of %s",
                    name, human_bytes(max(freed, 0)), human_bytes(expected))
        return eviction

    def evict_all(self) -> None:
        """At shutdown: what comes back is the process's exit's business, not worth a warning."""
        for name in list(self._resident):
            self.evict(name, warn_if_kept=False)

    def _make_room(self, need: int, busy: set[str], adding: bool = True) -> None:
        """Evict idle models, least recently used first, until one more model of `need` bytes fits
        (adding=False: until what is resident fits)."""
        def over() -> bool:
            too_many = len(self._resident) + (1 if adding else 0) > self.max_resident
            return too_many or self.used() + need > self.budget

        while over():
            idle = [name for name in self._resident if name not in busy]
            if not idle:
                if busy & set(self._resident):
                    raise NoRoomYet()
                return
            self.evict(idle[0])

    def _estimate(self, spec, location: str) -> int:
        """Parameters (from the safetensors headers) times bytes per parameter for the recipe."""
        parameters = _count_parameters(Path(location)) if Path(location).is_dir() else 0
        if not parameters:
            return 0  # a hub model not downloaded yet: settled after loading
        info = self.catalog.tokenizer(spec)
        recipe = self.catalog.backend_for(spec, info.model_type).load_recipe(spec.quantization, self.loader.device,
                                                                             info.model_type)
        per_parameter = BYTES_PER_PARAMETER.get(recipe.quantization)
        if per_parameter is None:
            dtype = recipe.kwargs.get("dtype")
            per_parameter = getattr(dtype, "itemsize", 4)
        return int(parameters * per_parameter)

    def _publish(self) -> None:
        self._counts = (dict(self._loads_by_model), dict(self._evictions_by_model))
        self._snapshot = [
            {"name": name, "footprint_bytes": r.footprint, "cache_bytes": r.extra, "last_used": r.last_used,
             "loads": self._loads_by_model[name], "evictions": self._evictions_by_model[name]}
            for name, r in self._resident.items()
        ]


MAX_SAFETENSORS_HEADER = 100 * 2**20  # the format's own limit


def _count_parameters(directory: Path) -> int:
    """Sum of tensor sizes in a checkpoint's safetensors headers, without reading weights."""
    total = 0
    for path in directory.glob("*.safetensors"):
        try:
            with path.open("rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if size > MAX_SAFETENSORS_HEADER:
                    continue  # not a safetensors file (a broken download): the load itself will say so
                header = json.loads(handle.read(size))
        except (OSError, ValueError):
            continue
        for key, tensor in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in tensor.get("shape", []):
                count *= dim
            total += count
    return total
