"""One streamed request to one replica through the `openai` client, and what its failures mean.

Completions send the family's token ids (`prompt: [ids]`) with its stop ids; chat sends the
family-normalised messages. Either way the server's events come back as text deltas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator

from bot.engines.openai.options import OpenAIOptions
from bot.generation import GenerationJob

RETRY_AFTER_DEFAULT = 1.0  # a 429 without Retry-After: wait this long before that replica again


@dataclass
class Chunk:
    text: str
    finish_reason: str | None = None
    completion_tokens: int | None = None  # the server's own counts, when it reports usage
    prompt_tokens: int | None = None
    reasoning: str = ""  # a reasoning model's thinking, where the server sends it apart (vLLM's reasoning parser)


class ReplicaFailed(Exception):
    """The replica failed this request in a way another replica may not (refused, timeout, 5xx, 429)."""

    def __init__(self, reason: str, retry_after: float | None = None, timed_out: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after  # set for a 429: the replica is healthy, only busy
        self.timed_out = timed_out


class RequestRejected(Exception):
    """The server refused the request itself (401/403, 400, 404): no replica will do better."""

    def __init__(self, reason: str, status: int):
        super().__init__(reason)
        self.status = status


def make_client(base_url: str, options: OpenAIOptions) -> Any:
    from openai import AsyncOpenAI, Timeout

    # No retries inside the client: the engine decides (another replica before the first token,
    # never after it). The read timeout is the longest wait for the next event.
    timeout = Timeout(options.request_timeout, connect=min(10.0, options.request_timeout))
    return AsyncOpenAI(base_url=base_url, api_key=options.api_key or "none", max_retries=0, timeout=timeout)


def request_arguments(job: GenerationJob, model: str, options: OpenAIOptions) -> dict[str, Any]:
    """The generation settings in the OpenAI request's terms (vLLM's extensions in extra_body)."""
    settings = job.settings
    sampling = settings.get("do_sample", False)
    arguments: dict[str, Any] = {
        "model": model,
        "max_tokens": int(settings.get("max_new_tokens", 512)),
        "temperature": float(settings.get("temperature", 1.0)) if sampling else 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    extra: dict[str, Any] = {}
    if sampling and "top_p" in settings:
        arguments["top_p"] = float(settings["top_p"])
    if sampling and "top_k" in settings:
        extra["top_k"] = int(settings["top_k"])
    if "repetition_penalty" in settings:
        extra["repetition_penalty"] = float(settings["repetition_penalty"])
    if options.sends_ids:
        arguments["prompt"] = list(job.input_ids)
        if job.stop_token_ids:
            extra["stop_token_ids"] = list(job.stop_token_ids)  # vLLM, SGLang: the family's turn ends
        else:
            extra["ignore_eos"] = True  # no stop ids asked (benchmarks): generate the full length
    else:
        arguments["messages"] = list(job.messages or [])
    if extra:
        arguments["extra_body"] = extra
    return arguments


async def stream_chunks(client: Any, job: GenerationJob, model: str, options: OpenAIOptions) -> AsyncIterator[Chunk]:
    """The server's events as Chunks; raises ReplicaFailed or RequestRejected. Closing the
    iterator early (a cancel) closes the HTTP response, so the server aborts the request."""
    arguments = request_arguments(job, model, options)
    try:
        if options.sends_ids:
            response = await client.completions.create(**arguments)
        else:
            response = await client.chat.completions.create(**arguments)
    except Exception as exc:  # noqa: BLE001 - sorted into ours, or raised as it is
        raise classify(exc) from None
    thinking = False
    try:
        async for event in response:
            chunk = _chunk(event, options.sends_ids)
            # thinking sent apart is put back between <think> tags, as the model wrote it:
            # the host treats every engine's reasoning text alike (bot/reasoning.py)
            if chunk.reasoning and not thinking:
                chunk.text, thinking = f"<think>{chunk.reasoning}{chunk.text}", True
            elif chunk.reasoning:
                chunk.text = chunk.reasoning + chunk.text
            elif thinking and (chunk.text or chunk.finish_reason):
                chunk.text, thinking = f"</think>{chunk.text}", False
            yield chunk
    except Exception as exc:  # noqa: BLE001 - an error event inside the stream, or the connection broke
        raise classify(exc) from None
    finally:
        await response.close()


def classify(exc: Exception) -> Exception:
    """The client's exception -> ReplicaFailed (another replica may serve), RequestRejected
    (none will), or the exception itself (a bug)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        return classify_status(exc)
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return ReplicaFailed(_connection_reason(exc), timed_out=isinstance(exc, openai.APITimeoutError))
    if _is_transport_error(exc):  # httpx's read errors when the server goes away midway
        return ReplicaFailed(f"the connection broke ({type(exc).__name__})")
    return exc


def _chunk(event: Any, completions: bool) -> Chunk:
    usage = getattr(event, "usage", None)
    tokens = getattr(usage, "completion_tokens", None) if usage else None
    prompt_tokens = getattr(usage, "prompt_tokens", None) if usage else None
    if not event.choices:
        return Chunk("", None, tokens, prompt_tokens)
    choice = event.choices[0]
    text = (choice.text if completions else getattr(choice.delta, "content", None)) or ""
    # vLLM and DeepSeek's API: `reasoning_content`; newer vLLM and OpenRouter: `reasoning`
    delta = None if completions else choice.delta
    reasoning = (getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)) if delta else None
    return Chunk(text, choice.finish_reason, tokens, prompt_tokens, reasoning if isinstance(reasoning, str) else "")


def classify_status(exc: Any) -> Exception:
    status = exc.status_code
    if status == 429:
        return ReplicaFailed("busy (429)", retry_after=_retry_after(exc.response))
    if status >= 500 or status in (408, 409):
        return ReplicaFailed(f"server error {status}")
    return RequestRejected(_status_reason(exc), status)


def _status_reason(exc: Any) -> str:
    message = ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("detail") or body.get("error") or "")
    return f"{exc.status_code}" + (f": {message[:200]}" if message else "")


def _retry_after(response: Any) -> float:
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else RETRY_AFTER_DEFAULT
    except ValueError:
        return RETRY_AFTER_DEFAULT


def _connection_reason(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    return f"unreachable ({type(cause).__name__ if cause else 'connection error'})"


def _is_transport_error(exc: Exception) -> bool:
    """httpx's (or httpx2's, in openai 3) read and protocol errors, by module: the client's
    transport is whichever the installed openai uses."""
    return any(cls.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "h11")
               for cls in type(exc).__mro__)


async def check_health(client: Any) -> list[str]:
    """GET /models: the ids the server serves; raises when it does not answer."""
    page = await client.models.list()
    return [model.id for model in page.data]
