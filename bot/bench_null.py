"""The bench's null model: what the bot itself costs per token.

These rows drive the whole path of a chat answer: `host.run_model` -> the local worker
(fair queue, batching, incremental detokenisation, the hand-off to the event loop) -> a
streamed reply kept exactly as a platform reply keeps it (bot/frontends/message_reply.py,
throttled edits and all, the platform calls themselves left out). The model costs nothing:
its next token is a fixed function of the last one (the fixed logits of a one-token lookup
table), alone as plain generate would stream it and in a batch where one step makes a
token for every running reply. So all the time a row takes is the bot's own: tokens/s is
its ceiling and wall time / tokens its cost per token. transformers' generate and
continuous batching go with the model; the other bench rows measure them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bot.bench_shapes import PAD_ID, SMOKE_SHAPE, UNK_ID

if TYPE_CHECKING:
    from bot.app import App
    from bot.config import Settings
    from bot.worker.running import RunningJob

NULL_PROMPT = "Tell me about lighthouses."
# the lowest id that is no special token of the bench tokenizer (bot/bench_shapes.py)
FIRST_WORD_ID = max(PAD_ID, UNK_ID) + 1


def next_token(last: int, vocab_size: int) -> int:
    """The null model's greedy choice after `last`: the next ordinary word of the vocabulary,
    so a reply reads "t5 t6 t7 …" and never hits a stop token."""
    following = last + 1
    return following if FIRST_WORD_ID <= following < vocab_size else FIRST_WORD_ID


def generate_alone(model: Any, pad_token_id: int | None, running: RunningJob, idle_timeout: float,
                   should_hand_off: Callable[[], bool], between_tokens: Callable[[], None] = lambda: None) -> str:
    """bot/worker/plain.run_plain's contract, for the null model: a token, then the same checks
    run_plain makes after every token (take_tokens)."""
    from bot.worker.plain import take_tokens

    vocab_size = model.config.vocab_size
    last = running.continuation_ids()[-1]
    running.last_token_at = time.monotonic()
    while True:
        last = next_token(last, vocab_size)
        reason = take_tokens(running, [last], idle_timeout, should_hand_off, between_tokens)
        if reason is not None:
            return reason


class _Status:
    name = "GENERATING"


class NullRequest:
    """One request in the null batch, shaped like transformers' streamed GenerationOutput."""

    status = _Status()
    error = None
    logprobs = None

    def __init__(self, request_id: str, last: int, max_new_tokens: int):
        self.request_id = request_id
        self.last = last
        self.max_new_tokens = max_new_tokens
        self.generated_tokens: list[int] = []

    def is_finished(self) -> bool:
        return len(self.generated_tokens) >= self.max_new_tokens


class NullBatchSession:
    """bot/worker/batching.BatchSession's interface: each poll is one step that gives every
    running request its next token. Used on the worker thread only, like the real one."""

    cache_bytes = 0
    changes_attention = False
    fatal_error = None
    alive = True

    def __init__(self, model: Any, settings: dict[str, Any], max_batch: int, kv_tokens: int, device: str):
        self.vocab_size = model.config.vocab_size
        self.requests: dict[str, NullRequest] = {}

    def add(self, input_ids: list[int], max_new_tokens: int, stop_token_ids: list[int], request_id: str) -> None:
        self.requests[request_id] = NullRequest(request_id, input_ids[-1], max_new_tokens)

    def cancel(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    def poll(self, timeout: float) -> list[NullRequest]:
        if not self.requests:
            time.sleep(timeout)  # as the real one waits for outputs that cannot come
            return []
        outputs = list(self.requests.values())
        for request in outputs:
            request.last = next_token(request.last, self.vocab_size)
            request.generated_tokens.append(request.last)
            if request.is_finished():
                del self.requests[request.request_id]
        return outputs

    def close(self) -> None:
        self.requests.clear()


def null_worker_type() -> type:
    """The local worker with the null model's token source; everything else is the worker's."""
    from bot.worker import Worker

    class NullModelWorker(Worker):
        generate_alone = staticmethod(generate_alone)
        batch_session_type = NullBatchSession

    return NullModelWorker


def null_registry() -> Any:
    """The plugins as `modelbot run` loads them, with the local engine's worker swapped."""
    from bot.engines.local import LOCAL
    from bot.plugins import load_plugins

    worker_type = null_worker_type()

    def create(context: Any, specs: list) -> dict[str, Any]:
        worker = worker_type(context.catalog, context.settings.worker,
                             max_resident=context.settings.max_resident_models)
        return {spec.name: worker for spec in specs}

    registry = load_plugins()
    registry.engines[LOCAL.name] = dataclasses.replace(LOCAL, create=create)
    return registry


def null_settings(source: Path, scratch: Path, max_users: int) -> Settings:
    """The smoke shape's files (a real tokenizer and chat template) as the null model, with a
    batch as wide as the most concurrent replies: the null batch has no memory to run out of."""
    from bot.config import parse_settings

    worker = {"max_batch": max_users, "max_pending": max(64, max_users), "max_pending_per_user": 4}
    raw = {"device": "cpu", "store": str(scratch / "null.sqlite3"), "cache_dir": str(scratch),
           "models": [{"name": "null", "source": str(source), "quantization": "none"}], "worker": worker}
    return parse_settings(raw, scratch)


# -- a streamed reply, as a platform reply keeps it ----------------------------------------------
def memory_reply_type() -> type:
    from bot.frontends.message_reply import MessageReplyBase

    class MemoryReply(MessageReplyBase):
        """A platform reply whose platform is a list: posts and edits only record the text."""

        def __init__(self, interval: float):
            super().__init__(limit=2000, interval=interval, name="bench reply")
            self.shown: list[str] = []
            self.edits = 0
            self.first_text_at: float | None = None

        async def _post(self, text: str, previous: Any) -> int:
            self.shown.append(text)
            return len(self.shown) - 1

        async def _edit(self, message: int, text: str) -> None:
            self.shown[message] = text
            self.edits += 1

        def stream(self, header: str = "") -> Any:
            inner = super().stream(header)
            reply = self

            class FirstTextClock:  # when the first words reached the reply: the first token
                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

                async def write(self, delta: str) -> None:
                    if reply.first_text_at is None:
                        reply.first_text_at = time.perf_counter()
                    await inner.write(delta)

            return FirstTextClock()

        async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
            pass

    return MemoryReply


@dataclasses.dataclass
class NullRun:
    replies: int
    tokens: int
    seconds: float
    first_token_seconds: list[float]
    edits: int
    texts: list[str]  # each reply's answer, as the host returned it


async def null_run(app: App, replies: int, new_tokens: int, edit_interval: float) -> NullRun:
    """`replies` chat answers at once, one user each, through host.run_model; wall time of all."""
    from bot.events import ChatEvent

    spec = app.catalog.spec("null")
    reply_type = memory_reply_type()
    overrides = {"do_sample": False, "max_new_tokens": new_tokens}

    async def one(user: int, started: float) -> tuple[int, float, int, str]:
        reply = reply_type(edit_interval)
        await reply.start()
        event = ChatEvent(channel="bench", user=f"u{user}", text=NULL_PROMPT, history=[])
        messages = [{"role": "user", "content": NULL_PROMPT}]
        result = await app.host.run_model(spec, messages, reply.stream(), reply, event, overrides)
        await reply.close()
        if result.error or result.stats is None:
            raise RuntimeError(f"a null-model reply failed: {result.error}")
        first = (reply.first_text_at or time.perf_counter()) - started
        return result.stats.new_tokens, first, reply.edits, result.text

    started = time.perf_counter()
    results = await asyncio.gather(*(one(user, started) for user in range(replies)))
    seconds = time.perf_counter() - started
    return NullRun(replies, sum(r[0] for r in results), seconds, [r[1] for r in results],
                   sum(r[2] for r in results), [r[3] for r in results])


async def measure_null(cache_dir: Path, scratch: Path, counts: list[int], new_tokens: int, edit_interval: float,
                       progress: Callable[[str], None]) -> list[NullRun]:
    """A warm-up, then one timed run per count of concurrent replies, on one app."""
    from bot.app import build_app
    from bot.bench_shapes import ensure_shape

    source = await asyncio.to_thread(ensure_shape, SMOKE_SHAPE, cache_dir, progress)
    scratch.mkdir(parents=True, exist_ok=True)
    settings = await asyncio.to_thread(null_settings, source, scratch, max(counts))
    app = build_app(settings, null_registry())
    try:
        await null_run(app, 2, min(8, new_tokens), edit_interval)  # loads the files, warms every path
        runs = []
        for replies in counts:
            progress(f"null model, {replies} concurrent replies")
            runs.append(await null_run(app, replies, new_tokens, edit_interval))
        return runs
    finally:
        await app.close()
