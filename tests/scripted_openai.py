"""An OpenAI-compatible chat server that streams scripted replies, shaped as vLLM streams them
(server-sent events of chat.completion.chunk, a usage chunk, [DONE]).

For what no small real model does on demand: a reasoning model's `<think>…</think>` before
its answer, in the content (vLLM without a reasoning parser, llama.cpp) or apart in
`delta.reasoning_content` (vLLM with `--reasoning-parser`, DeepSeek's API). Every request's
body is kept, to see what the bot sent back as history.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from aiohttp import web
from emulator_base import LocalServer


@dataclass(frozen=True)
class Reasoning:
    """A piece of thinking sent apart from the content (delta.reasoning_content)."""

    text: str


class ScriptedChatServer(LocalServer):
    def __init__(self, served: str = "reasoner", pause: float = 0.05):
        super().__init__()
        self.served, self.pause = served, pause
        self.replies: list[tuple[list, str]] = []  # the next requests' (pieces, finish_reason), in order
        self.bodies: list[dict] = []

    @property
    def base_url(self) -> str:
        return f"{self.http_base}/v1"

    def will_answer(self, pieces: list, finish_reason: str = "stop") -> None:
        """Queue the reply to the next request: text pieces (content) and Reasoning pieces."""
        self.replies.append((pieces, finish_reason))

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.served, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 8192}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if not self.replies:
            return web.json_response({"error": {"message": "no scripted reply left"}}, status=500)
        pieces, finish_reason = self.replies.pop(0)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(choices: list, **extra) -> None:
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": self.served,
                     "choices": choices, **extra}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for piece in pieces:
            await asyncio.sleep(self.pause)
            delta = {"reasoning_content": piece.text} if isinstance(piece, Reasoning) else {"content": piece}
            await send([{"index": 0, "delta": delta, "finish_reason": None}])
        await send([{"index": 0, "delta": {}, "finish_reason": finish_reason}])
        await send([], usage={"prompt_tokens": 12, "completion_tokens": len(pieces), "total_tokens": 12 + len(pieces)})
        await response.write(b"data: [DONE]\n\n")
        return response
