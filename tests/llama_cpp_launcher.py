"""Run llama-cpp-python's OpenAI-compatible server, accepting token-id prompts on /v1/completions.

    python tests/llama_cpp_launcher.py --model PATH.gguf --port N [--n_ctx 2048 --n_threads 2 ...]

Every option of `python -m llama_cpp.server` is accepted (this calls its main()), and the app
that answers is the real llama_cpp.server app: its streaming SSE, /v1/models, model lookup,
locking and abort on client disconnect are all untouched. Two things change: llama.cpp's AMX
and repacking kernels are off (they crash llama-cpp-python 0.3.36 on an AMX CPU: see
bot/bench_cpu.py's llama_cpp_without_extra_buffer_types), and one thing is widened, before the
app is imported:

Why: the prompt of /v1/completions may be a list of token ids in the OpenAI API, and llama.cpp's
own C++ `llama-server`, vLLM and SGLang all accept that; the remote engine sends its prompts that
way (it renders the chat template itself). llama-cpp-python's FastAPI server declares
`CreateCompletionRequest.prompt: Union[str, List[str]]`, so a list of ints is refused (422), and
its create_completion handler collapses any list prompt to its first element
(`assert len(body.prompt) <= 1; body.prompt = body.prompt[0]`), although the `Llama.__call__`
it hands the prompt to accepts `List[int]` natively.

The patch: a subclass of CreateCompletionRequest whose prompt also admits `List[int]` (one
prompt of token ids) and `List[List[int]]` (a batch of such prompts, as OpenAI defines it), and
which turns one flat id list into a batch of one. The handler's own collapse then yields that id
list, and Llama.__call__ receives it as is. A batch of more than one prompt is refused by the
handler's assert, as a batch of several strings already is.
"""

from __future__ import annotations

from typing import List, Union

from pydantic import Field, field_validator

import llama_cpp.server.types as server_types

_StockCompletionRequest = server_types.CreateCompletionRequest


class TokenIdsCompletionRequest(_StockCompletionRequest):
    # Union order matters to pydantic's smart-mode union only for ties; a list of ints matches
    # List[int] exactly and a list of strings List[str].
    prompt: Union[str, List[str], List[int], List[List[int]]] = Field(
        default="", description="The prompt: a string, or token ids (one list, or a batch of lists)."
    )

    @field_validator("prompt")
    @classmethod
    def _one_id_list_is_a_batch_of_one(cls, prompt):
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [prompt]  # the handler's `body.prompt = body.prompt[0]` unwraps it again
        return prompt


# app.py does `from llama_cpp.server.types import CreateCompletionRequest` and its
# /v1/completions route is built from that annotation when app.py is first imported, so the
# name is replaced here, before that import.
server_types.CreateCompletionRequest = TokenIdsCompletionRequest

import llama_cpp.server.app as server_app  # noqa: E402  (must follow the patch above)

assert server_app.CreateCompletionRequest is TokenIdsCompletionRequest, (
    "llama_cpp.server.app was imported before the token-id patch: run this file as the entry point"
)


def main() -> None:
    from llama_cpp.server.__main__ import main as llama_server_main

    from bot.bench_cpu import llama_cpp_without_extra_buffer_types

    with llama_cpp_without_extra_buffer_types():
        llama_server_main()


if __name__ == "__main__":
    main()
