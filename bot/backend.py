"""The family backend contract: what a plugin owns for one family of models.

A backend turns a conversation into the exact prompt its models were trained on, says
which tokens end a reply, and knows how to load its models (the 4-bit recipe). The base
class holds the behaviour most families share; a family overrides only what differs.
Heavy imports (torch, transformers) stay inside the methods that need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bot.errors import UserFacingError

ROLES = ("system", "user", "assistant")
QUANTIZATION_MODES = ("auto", "nf4", "int8", "none")


class BackendError(UserFacingError):
    """A problem a user can act on (no chat template, bad messages, ...)."""


@dataclass(frozen=True)
class Prompt:
    """What the model is fed: the rendered text, its token ids, and the ids that end a reply."""

    text: str
    input_ids: list[int]
    stop_token_ids: list[int]
    #: the conversation after the family's rules, for engines that take messages (chat APIs)
    messages: list[dict] | None = None
    #: the prompt's length when there are no ids to count (a chat API without a tokenizer)
    estimated_tokens: int | None = None

    @property
    def token_count(self) -> int:
        return len(self.input_ids) if self.estimated_tokens is None else self.estimated_tokens


@dataclass(frozen=True)
class LoadRecipe:
    """How from_pretrained is called: the quantization config and extra keyword arguments."""

    quantization: str  # the resolved mode: nf4, int8 or none
    quantization_config: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def fold_system_into_first_user(messages: list[dict]) -> list[dict]:
    """System text, a blank line, then the first user text (Gemma 3's own rule), for
    templates without a system role."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    first_user = next((m for m in rest if m["role"] == "user"), None)
    if system and first_user is not None:
        first_user["content"] = f"{system}\n\n{first_user['content']}"
    return rest


def drop_leading_assistant_turns(messages: list[dict]) -> list[dict]:
    """Strictly alternating templates must open with a user turn (after any system turn)."""
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    while turns and turns[0]["role"] != "user":
        turns.pop(0)
    return system + turns


class FamilyBackend:
    """Base class for a model family. Subclasses set the class attributes and override hooks."""

    #: the plugin-facing name shown in `/models` and usable as `family:` in config.yaml
    name: ClassVar[str] = ""
    #: config.json `model_type` values this family serves
    model_types: ClassVar[tuple[str, ...]] = ()
    #: regular expressions matched against the lowercased source when model_type is unknown
    name_patterns: ClassVar[tuple[str, ...]] = ()
    #: turn-end tokens of the family's templates; those present in a tokenizer's vocabulary
    #: are always stop tokens, whatever generation_config says
    turn_end_tokens: ClassVar[tuple[str, ...]] = ()
    #: default generation settings (a model's config entry overrides them)
    generation_defaults: ClassVar[dict[str, Any]] = {
        "max_new_tokens": 512,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }

    # -- recognising models -------------------------------------------------------------
    def handles(self, model_type: str | None, source: str) -> bool:
        if model_type:
            return model_type in self.model_types
        lowered = source.lower()
        return any(re.search(pattern, lowered) for pattern in self.name_patterns)

    # -- prompts ---------------------------------------------------------------------------
    def normalize_messages(self, messages: list[dict], model_type: str | None) -> list[dict]:
        """Validate roles, trim text, drop empty turns and merge consecutive same-role turns.

        Families whose templates are stricter (no system role, strict alternation) extend this.
        """
        merged: list[dict] = []
        for message in messages:
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise BackendError(f"unknown message role {role!r}: expected one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise BackendError(f"message content must be text, got {type(content).__name__}")
            content = content.strip()
            if not content:
                continue
            if merged and merged[-1]["role"] == role:
                merged[-1] = {"role": role, "content": merged[-1]["content"] + "\n\n" + content}
            else:
                merged.append({"role": role, "content": content})
        if not any(m["role"] == "user" for m in merged):
            raise BackendError("the conversation has no user message")
        return merged

    def fallback_chat_template(self, model_type: str | None) -> str | None:
        """The template used when the tokenizer ships none (e.g. a GGUF without one)."""
        return None

    def chat_template(self, tokenizer: Any, model_type: str | None) -> str:
        template = getattr(tokenizer, "chat_template", None) or self.fallback_chat_template(model_type)
        if not template:
            raise BackendError(
                f"the tokenizer has no chat template and the {self.name} plugin has no fallback for "
                f"model_type {model_type!r}"
            )
        return template

    def template_kwargs(self, model_type: str | None) -> dict[str, Any]:
        """Extra variables the family's template expects (Llama 3.1's date_string, ...)."""
        return {}

    def build_prompt(
        self,
        tokenizer: Any,
        messages: list[dict],
        model_type: str | None,
        generation_config: Any = None,
    ) -> Prompt:
        """Render and tokenize a conversation, ready for generation.

        User and history text is tokenized as plain text (`sanitize_control_tokens`): a user
        who types `<|im_end|>` gets those characters, never the control token.
        """
        template = self.chat_template(tokenizer, model_type)
        normalized = self.template_messages(messages, model_type, template)
        extra = self.template_kwargs(model_type)
        try:
            text = tokenizer.apply_chat_template(
                normalized, chat_template=template, add_generation_prompt=True, tokenize=False, **extra
            )
            input_ids = tokenizer.apply_chat_template(
                normalized,
                chat_template=template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
                sanitize_control_tokens=True,
                **extra,
            )
        except Exception as exc:  # jinja2's TemplateError, or raise_exception() inside a template
            raise BackendError(f"the {self.name} chat template rejected this conversation: {exc}") from exc
        return Prompt(
            text=text,
            input_ids=[int(i) for i in input_ids],
            stop_token_ids=self.stop_token_ids(tokenizer, generation_config),
            messages=normalized,
        )

    def template_messages(self, messages: list[dict], model_type: str | None, template: str | None) -> list[dict]:
        """The conversation as the template must see it: normalised, and with the system text
        folded into the first user turn where the template has no system role (Phi-3 mini,
        Mistral v0.1/v0.2 drop or reject one). `template` None: not known (a chat API
        without a tokenizer), so the family's own rules alone apply."""
        normalized = self.normalize_messages(messages, model_type)
        if template is not None and "system" not in template:
            normalized = fold_system_into_first_user(normalized)
        return normalized

    def stop_token_ids(self, tokenizer: Any, generation_config: Any = None) -> list[int]:
        """generation_config's eos ids, the tokenizer's eos, and the family's turn-end tokens."""
        ids: set[int] = set()
        eos = getattr(generation_config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(i) for i in eos)
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        for token in self.turn_end_tokens:
            token_id = tokenizer.convert_tokens_to_ids(token)
            # unknown tokens map to unk: keep only ids that really are this token
            if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token:
                ids.add(token_id)
        return sorted(ids)

    # -- loading ---------------------------------------------------------------------------
    def load_recipe(self, quantization: str, device: str, model_type: str | None = None) -> LoadRecipe:
        """How to load a model of this family on `device` ("cpu", "cuda", "cuda:1", ...).

        `auto` is NF4 with double quantization and bf16 compute on a GPU, and full precision
        on a CPU, where bitsandbytes' 4-bit kernels decode far slower than fp32. `model_type`
        lets a family vary its load arguments by generation (Gemma 2 needs eager attention).
        """
        import torch

        on_gpu = device.startswith("cuda")
        if quantization not in QUANTIZATION_MODES:
            raise BackendError(f"unknown quantization {quantization!r}: expected one of {', '.join(QUANTIZATION_MODES)}")
        mode = ("nf4" if on_gpu else "none") if quantization == "auto" else quantization
        kwargs = self.load_kwargs(mode, device, model_type)
        if mode == "none":
            kwargs.setdefault("dtype", torch.bfloat16 if on_gpu else torch.float32)
            return LoadRecipe("none", None, kwargs)

        from transformers import BitsAndBytesConfig

        if mode == "nf4":
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        else:
            config = BitsAndBytesConfig(load_in_8bit=True)
        # The layers bitsandbytes leaves alone (embeddings, norms, lm_head) stay in bf16 on a GPU.
        kwargs.setdefault("dtype", torch.bfloat16 if on_gpu else torch.float32)
        return LoadRecipe(mode, config, kwargs)

    def load_kwargs(self, quantization: str, device: str, model_type: str | None = None) -> dict[str, Any]:
        """Family-specific from_pretrained arguments (attention implementation, ...)."""
        return {}

    def prepare_model(self, model: Any, model_type: str | None = None) -> None:
        """Called once on the worker thread after a model of this family has loaded: the place
        for family-specific adjustments (generation config, hooks). Default: nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
