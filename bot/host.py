"""The host: routes a chat event to a command or to the model, for every frontend alike."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from bot.attachments import FileRefused, FileText, check_file_tokens, with_files
from bot.backend import BackendError
from bot.catalog import ModelCatalog
from bot.channel_settings import ChannelSettings, ChannelSettingsStore
from bot.commands import Commands
from bot.config import ModelSpec, Settings
from bot.conversation import ChannelHistory, fit_to_context
from bot.engines import Engine
from bot.engines.router import Engines
from bot.errors import UserFacingError
from bot.events import ChatEvent, ChatResult, format_footer
from bot.generation import GenerationJob, GenerationStats
from bot.readiness import Readiness
from bot.reasoning import AnswerStream, prompt_opens_thinking
from bot.reply import Reply, ReplyGone, ReplyStream, notice
from bot.store import Store

if TYPE_CHECKING:
    from bot.metrics import Metrics  # imports prometheus_client: only when metrics are on

__all__ = ["ChatEvent", "ChatResult", "Host", "format_footer"]  # frontends and tests import these from here

log = logging.getLogger(__name__)

MODEL_KEY = "model"


class Host:
    def __init__(self, settings: Settings, catalog: ModelCatalog, store: Store, engines: Engines):
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.engines = engines
        self.history = ChannelHistory()
        self.channel_settings = ChannelSettingsStore(store)  # /settings: persona, sampling, reply and history length
        self.commands = Commands(self)
        self._session_models: dict[str, str] = {}  # channel -> model, not persisted (console --model)
        self._progress_tasks: set[asyncio.Task] = set()
        self.readiness = Readiness()  # frontends report their connection here, for /readyz
        self.metrics: Metrics | None = None  # set by build_app when the config turns metrics on

    async def handle(self, event: ChatEvent, reply: Reply) -> None:
        """Answer one event; whatever happens, the user gets a message."""
        text = event.text.strip()
        try:
            if text.startswith("/"):
                await self.commands.dispatch(event, text, reply)
            elif text or event.files:
                await self.chat(event, reply)
            else:
                await notice(reply, "Say something, or /help for commands.")
        except ReplyGone:
            raise  # the platform message is gone: nothing to answer into (the frontend logs it)
        except FileRefused as exc:  # a polite refusal, like the intake's for a binary file: not an error
            await notice(reply, str(exc))
        except UserFacingError as exc:
            await notice(reply, f"error: {exc}")
        except Exception as exc:  # noqa: BLE001 - never leave a user without an answer
            log.exception("unexpected failure handling %r in %s", text[:80], event.channel)
            await notice(reply, f"error: something went wrong ({type(exc).__name__}: {exc})")

    # -- model choice ---------------------------------------------------------------------------
    def channel_model(self, channel: str) -> ModelSpec:
        chosen = self._session_models.get(channel) or self.store.get(channel, MODEL_KEY)
        if chosen and self.settings.model(chosen):
            return self.settings.model(chosen)
        return self.catalog.spec(None)

    def set_channel_model(self, channel: str, name: str, persist: bool = True) -> ModelSpec:
        spec = self.catalog.spec(name)  # raises UnknownModel with the valid names
        if persist:
            self._session_models.pop(channel, None)
            self.store.set(channel, MODEL_KEY, spec.name)
        else:
            self._session_models[channel] = spec.name
        return spec

    # -- chat -------------------------------------------------------------------------------------
    async def chat(self, event: ChatEvent, reply: Reply, *, overrides: dict | None = None) -> ChatResult:
        spec = self.channel_model(event.channel)
        chosen = self.channel_settings.get(event.channel)
        keeps_history = event.history is None
        history = self.history.get(event.channel) if keeps_history else list(event.history)
        text = event.text.strip()
        if event.files:
            await self._check_files(spec, event.files, text, chosen)
        turn = {"role": "user", "content": with_files(text, event.files)}
        messages = chosen.with_system([*chosen.trimmed_history(history), turn])

        def footer(stats: GenerationStats | None) -> str:
            # the tokenizer is loaded by now (model_defaults reads it): the settings that differ end the footer
            differing = chosen.differing(self.model_defaults(spec))
            return " · ".join(part for part in (format_footer(stats), *differing) if part)

        result = await self.run_model(spec, messages, reply.stream(), reply, event,
                                      {**chosen.generation_overrides(), **(overrides or {})}, footer=footer)
        if keeps_history and result.error is None:
            self.history.add(event.channel, "user", text)
            self.history.add(event.channel, "assistant", result.text)
        return result

    def model_defaults(self, spec: ModelSpec) -> dict:
        """What a channel's /settings start from: the model's generation settings and system
        prompt (blocking: reads the tokenizer the first time)."""
        info = self.catalog.tokenizer(spec)
        defaults = {**self.catalog.backend_for(spec, info.model_type).generation_defaults, **spec.generation}
        defaults["max_new_tokens"] = min(defaults.get("max_new_tokens", 512), self.settings.worker.max_new_tokens)
        return {**defaults, "system": spec.system_prompt, "context_length": info.context_length}

    async def _check_files(self, spec: ModelSpec, files: list[FileText], text: str, chosen: ChannelSettings) -> None:
        """Files whose text cannot fit the model's context beside the question and the reply
        are refused before anything is generated."""
        info = await asyncio.to_thread(self.catalog.tokenizer, spec)
        if info.tokenizer is not None:
            def count(piece: str) -> int:
                return len(info.tokenizer.encode(piece, add_special_tokens=False))
        else:
            def count(piece: str) -> int:
                return len(piece) // 4 + 1  # a chat API's model without a tokenizer: ~4 characters a token
        defaults = await asyncio.to_thread(self.model_defaults, spec)
        reply_tokens = chosen.max_new_tokens or defaults["max_new_tokens"]
        room = 64 + len(text) // 2  # the template's tokens and the question, generously
        budget = info.context_length - min(reply_tokens, info.context_length // 2) - room
        await asyncio.to_thread(check_file_tokens, files, count, budget, spec.name)

    async def run_model(
        self,
        spec: ModelSpec,
        messages: list[dict],
        stream: ReplyStream,
        reply: Reply,
        event: ChatEvent,
        overrides: dict | None = None,
        footer: Callable[[GenerationStats | None], str] | None = None,
        reserved: bool = False,
    ) -> ChatResult:
        """Prompt -> the model's engine -> streamed reply, with a footer or an error at the end.
        An answer cut midway keeps its text, followed by the error. `reserved`: part of a command
        that holds its user's place in the queue (Engines.reserve)."""
        parts: list[str] = []
        try:
            info = await asyncio.to_thread(self.catalog.tokenizer, spec)
            settings = self.catalog.generation_settings(spec, info.model_type, overrides)
            reply_tokens = settings.get("max_new_tokens", 512)
            trimmed = await asyncio.to_thread(
                fit_to_context, messages, lambda m: self.catalog.prompt(spec, m), info.context_length, reply_tokens
            )
            prompt_tokens = trimmed.prompt.token_count
            if prompt_tokens >= info.context_length:
                raise BackendError(
                    f"the message is {prompt_tokens} tokens long; {spec.name} reads at most {info.context_length}"
                )
            # never ask for more tokens than the context has room for
            settings["max_new_tokens"] = min(reply_tokens, info.context_length - prompt_tokens)
            if trimmed.dropped:
                note = f"the {trimmed.dropped} oldest messages did not fit {spec.name}'s context and were left out"
                # a stream that can keep a note shows it with the reply; otherwise it is a passing status
                await (stream.note(note) if hasattr(stream, "note") else reply.progress(f"({note})"))
            job = GenerationJob(
                model=spec.name,
                input_ids=trimmed.prompt.input_ids,
                stop_token_ids=trimmed.prompt.stop_token_ids,
                messages=trimmed.prompt.messages,
                settings=settings,
                user=event.user,
                channel=event.channel,
                reserved=reserved,
            )
            engine = self.engines.for_model(spec.name)
            generation = engine.submit(job, self._progress_sink(reply), self._position_sink(stream, engine))
            # a reasoning model's <think> text is a status (or shown collapsed), not the answer
            answer = AnswerStream(stream, reply.progress, show=spec.show_thinking,
                                  inside=prompt_opens_thinking(trimmed.prompt.text))
            parts = answer.answer
            try:
                async for delta in generation:
                    await answer.write(delta)
                await answer.end()
            finally:
                if generation.stats is None:  # left early (task cancelled, frontend failed): free the engine
                    generation.cancel()
            if answer.thought_only and generation.stats.stopped_by == "length":
                await answer.show_thinking_if_wanted()
                raise BackendError(f"{spec.name} used all its {generation.stats.new_tokens} tokens thinking and had "
                                   "none left to answer; give it more room (/settings max_new_tokens)")
            if answer.thought_only and generation.stats.stopped_by == "eos":
                await answer.write_thinking_as_answer()  # it never closed its thinking: that is its answer
        except UserFacingError as exc:
            self._record(event, spec, exc)
            await stream.fail(str(exc))
            return ChatResult("".join(parts), None, str(exc))
        except BaseException as exc:  # cancelled, the reply gone, a bug: counted, then on its way
            self._record(event, spec, exc)
            raise
        stats = generation.stats
        self._record(event, spec, stats)  # before the footer: whoever sees the answer sees it counted
        await stream.finish((footer or format_footer)(stats))
        return ChatResult("".join(parts), stats)

    def _record(self, event: ChatEvent, spec: ModelSpec, ended: GenerationStats | BaseException | None) -> None:
        if self.metrics is None:
            return
        if isinstance(ended, BaseException):
            self.metrics.ended_by(event.frontend, spec.name, ended)
        else:
            self.metrics.finished(event.frontend, spec.name, ended)

    def _position_sink(self, stream: ReplyStream, engine: Engine) -> Callable[[int], None] | None:
        """Queue positions (reported on the loop) -> the reply's optional `queued` display."""
        queued = getattr(stream, "queued", None)
        if queued is None:
            return None

        def show(position: int) -> None:
            if position > 0 and not engine.generating():
                return  # waiting only for a model to load: the load progress says more
            task = asyncio.get_running_loop().create_task(queued(position))
            self._progress_tasks.add(task)
            task.add_done_callback(self._progress_tasks.discard)

        return show

    def _progress_sink(self, reply: Reply) -> Callable[[str], None]:
        """A callback an engine's thread may call; the message reaches the frontend on the loop."""
        loop = asyncio.get_running_loop()

        def show(message: str) -> None:
            task = loop.create_task(reply.progress(message))
            self._progress_tasks.add(task)  # asyncio keeps only weak references to tasks
            task.add_done_callback(self._progress_tasks.discard)

        def report(message: str) -> None:
            loop.call_soon_threadsafe(show, message)

        return report
