"""The remote-server test infrastructure on its own: real llama-cpp-python and `transformers
serve` processes on 127.0.0.1, and the recording proxy in front of them."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from openai import AsyncOpenAI

from helpers import run_async
from remote_servers import *  # noqa: F401,F403  (the fixtures)
from remote_servers import LLAMA_MODEL_ID

# SmolLM2-135M's default system prompt ("You are a helpful AI assistant named SmolLM...") makes
# the greedy answer to this question a near tie between "The" and "L" (logits 25.33 vs 25.24 in
# float32): llama.cpp's quantized arithmetic picks "L'Étoile, ..." and never says Paris. With a
# plain system prompt both servers answer "The capital of France is Paris."
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
STORY = [{"role": "user", "content": "Tell me a long story about a dragon."}]


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


def prompt_ids(tokenizer, messages) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


async def stream_completion(session, base_url: str, body: dict, stop_after: int | None = None) -> dict:
    """POST a streaming /v1/completions; returns the events' texts, arrival times and ending."""
    got = {"texts": [], "times": [], "finish_reason": None, "done": False}
    async with session.post(f"{base_url}/v1/completions", json={**body, "stream": True}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                got["done"] = True
                continue
            choice = json.loads(data)["choices"][0]
            got["texts"].append(choice["text"])
            got["times"].append(time.monotonic())
            got["finish_reason"] = choice["finish_reason"] or got["finish_reason"]
            if stop_after is not None and len(got["texts"]) >= stop_after:
                break  # leaving the block closes the connection mid-stream
    return got


def test_llama_server_takes_token_ids_and_stops_at_eos(llama_server, tokenizer):
    assert llama_server.models() == [LLAMA_MODEL_ID]
    ids = prompt_ids(tokenizer, QUESTION)
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")

    async def ask():
        client = AsyncOpenAI(base_url=llama_server.api_base, api_key="none", max_retries=0)
        async with client:
            plain = await client.completions.create(
                model=LLAMA_MODEL_ID, prompt=ids, max_tokens=64, temperature=0
            )
            streamed = await client.completions.create(
                model=LLAMA_MODEL_ID, prompt=ids, max_tokens=64, temperature=0, stream=True
            )
            chunks = [chunk async for chunk in streamed]
        return plain, chunks

    plain, chunks = run_async(ask())
    text = plain.choices[0].text
    assert "Paris" in text, text
    # No stop strings were sent: the server ended at <|im_end|> (SmolLM2's EOS) by itself.
    assert plain.choices[0].finish_reason == "stop"
    assert "<|im_end|>" not in text
    assert plain.usage.prompt_tokens == len(ids)
    assert plain.usage.completion_tokens < 64
    assert "".join(c.choices[0].text for c in chunks) == text
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason == "stop"


def test_transformers_serve_answers_chat(transformers_server):
    assert transformers_server.models() == [transformers_server.model_id]

    async def ask():
        client = AsyncOpenAI(base_url=transformers_server.api_base, api_key="none", max_retries=0)
        async with client:
            answer = await client.chat.completions.create(
                model=transformers_server.model_id, messages=QUESTION, max_tokens=48, temperature=0
            )
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{transformers_server.api_base}/chat/completions",
                                        json={"model": "some-other-model", "messages": QUESTION}) as refused:
                    return answer, refused.status, await refused.text()

    answer, refused_status, refused_text = run_async(ask())
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert refused_status == 400 and "pinned" in refused_text


def test_proxy_counts_concurrent_streams_and_streams_through(llama_server, proxy_to, tokenizer):
    proxy = proxy_to(llama_server)
    ids = prompt_ids(tokenizer, STORY)
    body = {"model": LLAMA_MODEL_ID, "prompt": ids, "max_tokens": 16, "temperature": 0}

    async def three():
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(stream_completion(session, proxy.url, body) for _ in range(3)))

    results = run_async(three())
    proxy.wait_idle()
    assert proxy.max_in_flight == 3
    assert proxy.in_flight == 0 and proxy.disconnects == 0
    assert proxy.bodies("/v1/completions") == [{**body, "stream": True}] * 3
    assert all(r.status == 200 and r.completed for r in proxy.requests)
    for result in results:
        assert result["done"] and result["finish_reason"] == "length"
        assert len(result["texts"]) >= 16 and "".join(result["texts"]).strip()
        # Streamed through, not buffered: the 16 tokens arrived spread over their generation.
        assert result["times"][-1] - result["times"][0] > 0.1


def test_client_disconnect_reaches_the_server(llama_server, proxy_to, tokenizer):
    proxy = proxy_to(llama_server)
    ids = prompt_ids(tokenizer, STORY)
    log_mark = llama_server.log_size()

    async def leave_early_then_ask_again():
        async with aiohttp.ClientSession() as session:
            # 1000 tokens would take ~20 s on this CPU: we leave after 5.
            left = await stream_completion(
                session, proxy.url, {"prompt": ids, "max_tokens": 1000, "temperature": 0}, stop_after=5
            )
            await proxy.wait_for_async(lambda p: p.disconnects == 1, timeout=10)
            started = time.monotonic()
            again = await stream_completion(session, proxy.url, {"prompt": ids, "max_tokens": 8, "temperature": 0})
            return left, again, time.monotonic() - started

    left, again, seconds = run_async(leave_early_then_ask_again())
    assert len(left["texts"]) == 5 and not left["done"]
    # The server noticed and stopped generating: the next request is not stuck behind 995 tokens.
    assert again["done"] and seconds < 5, seconds
    llama_server.wait_for_log("Disconnected from client", since=log_mark)
    proxy.wait_idle()
    assert proxy.disconnects == 1
    assert [r.disconnected for r in proxy.requests] == [True, False]


def test_kill_and_restart_on_the_same_port(remote_servers, proxy_to, tokenizer):
    server = remote_servers.llama()
    proxy = proxy_to(server)
    port, first_pid = server.port, server.pid
    ids = prompt_ids(tokenizer, STORY)

    async def killed_midway():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{proxy.url}/v1/completions",
                                    json={"prompt": ids, "max_tokens": 1000, "stream": True}) as response:
                await response.content.readline()
                server.kill()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
            async with session.get(f"{proxy.url}/v1/models") as response:
                return response.status

    assert run_async(killed_midway()) == 502
    assert not server.is_alive()
    proxy.wait_idle()
    assert "mid-answer" in proxy.requests[0].error and "unreachable" in proxy.requests[1].error

    server.restart()
    assert server.port == port and server.pid != first_pid and server.starts == 2
    assert server.models() == [LLAMA_MODEL_ID]
    assert server.log_text().count("=== start") == 2


def test_a_server_that_wants_a_key(remote_servers):
    keyed = remote_servers.llama(api_key="the-key")
    assert keyed.models() == [LLAMA_MODEL_ID]
    # Given only as a server option, the key is unknown here: a 401 still counts as started.
    unknown = remote_servers.llama(extra_args=("--api_key", "other-key"))

    async def statuses():
        async with aiohttp.ClientSession() as session:
            got = []
            for server, key in ((keyed, None), (keyed, "wrong"), (keyed, "the-key"), (unknown, "other-key")):
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with session.post(f"{server.api_base}/completions", headers=headers,
                                        json={"prompt": "Hello", "max_tokens": 2}) as response:
                    got.append(response.status)
            return got

    assert run_async(statuses()) == [401, 401, 200, 200]
