"""The engine seam: what the host, the commands and the bench ask of whatever runs a model.

An engine takes a `GenerationJob` (prompt token ids, or messages for a chat API) and gives
back a `GenerationStream` of text deltas with queue positions, progress and final stats.
`local` (the in-process worker, bot/worker/) and `openai` (remote OpenAI-compatible
servers, bot/engines/openai/) are two engines; a plugin adds more through the
`register_engines` hook with an `EngineType`.

Beyond the contract, an engine may offer `async preload(model)` (load it at start, config
`preload:`) and `reserve(user)` / `release(user)` (a command such as /compare counts as one
of the user's requests); the router calls them where they exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bot.catalog import ModelCatalog
    from bot.config import ModelSpec, Settings
    from bot.generation import GenerationJob, GenerationStream
    from bot.inspect import LayerReport


@runtime_checkable
class Engine(Protocol):
    #: the engine type's name, as in a model entry's `engine:` ("local", "openai", ...)
    kind: str

    def submit(self, job: "GenerationJob", progress: Callable[[str], None] | None = None,
               on_position: Callable[[int], None] | None = None) -> "GenerationStream":
        """Queue a job (fairly, per user); raises WorkerBusy when the queue is full. `progress`
        may be called from any thread; `on_position` is called on the loop."""

    def active_jobs(self, channel: str | None = None) -> list["GenerationStream"]:
        """Waiting and running jobs (of one channel), for /stop and shutdown."""

    def generating(self) -> bool:
        """Whether a job is generating now: a queued job then waits for its turn, not a load."""

    def ready_models(self) -> list[str]:
        """Models that answer without a load first (loaded locally, or served remotely)."""

    def where(self, spec: "ModelSpec") -> str:
        """Where a model runs, for /models and /layers: "local (cuda)", "openai http://…" (never a key)."""

    async def inspect(self, spec: "ModelSpec", progress: Callable[[str], None]) -> "LayerReport":
        """The model's layers and footprint for /layers."""

    def snapshot(self) -> dict[str, Any]:
        """What /stats shows (any thread); always has "kind"."""

    async def close(self) -> None:
        """End every job (each stream ends with its text so far) and release the engine."""


@dataclass(frozen=True)
class EngineContext:
    """What an engine is made from."""

    settings: "Settings"
    catalog: "ModelCatalog"


@dataclass(frozen=True)
class EngineType:
    """An engine as a plugin registers it."""

    name: str
    #: a model entry (the whole mapping) -> the options object kept on ModelSpec.engine_options;
    #: reads only option_keys, raises ConfigError naming f"{where}.{key}" (where is "models[2]")
    parse_options: Callable[[dict[str, Any], str], Any]
    #: the model entry keys parse_options accepts
    option_keys: frozenset[str]
    #: the engines serving `specs` (every model of this type): model name -> engine. One engine
    #: may serve several models (the local worker serves all local ones).
    create: Callable[[EngineContext, list["ModelSpec"]], dict[str, Engine]]
    #: whether a model entry of this engine needs `source:` (local: the weights)
    needs_source: Callable[[Any], bool] = lambda options: True
