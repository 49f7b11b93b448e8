"""The lone-reply path (bot/worker/plain.py) where it leaves transformers' defaults.

run_plain gives generate no EOS of its own: put() stops at the job's stop ids, so a reply must
end exactly there and never at the model's default EOS. And it reads the model's logits for its
NaN check through a wrapper on the model's forward instead of a forward hook (cheaper per
token): the wrapper must see what generate sees, leave generate's behaviour alone (it reads
forward's signature) and leave the model as it found it.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import asyncio  # noqa: E402
import copy  # noqa: E402

import family_fixtures as ff  # noqa: E402
from bot.generation import GenerationJob, open_stream  # noqa: E402
from bot.worker.plain import keeping_logits, run_plain  # noqa: E402
from bot.worker.running import RunningJob  # noqa: E402


def _own_model():
    """A copy of the tiny SmolLM2-shaped fixture (ff.model is shared by every test module, and
    these tests change theirs)."""
    return copy.deepcopy(ff.model("smollm2"))


def _generate(model, prompt_length: int, new_tokens: int):
    ids = torch.arange(5, 5 + prompt_length).unsqueeze(0)
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              do_sample=False, eos_token_id=None, pad_token_id=0)


def test_the_kept_logits_are_those_generate_chose_from():
    model = _own_model()
    kept: dict = {}
    with keeping_logits(model, kept):
        output = _generate(model, prompt_length=6, new_tokens=3)
    # greedy: the last token generate appended is the argmax of the last kept logits
    assert int(kept["last"][0, -1].argmax()) == int(output[0, -1])


def test_generate_still_sees_the_models_own_signature():
    """generate asks forward for only the last position's logits when forward's signature
    takes logits_to_keep; a wrapper that hid the signature would make the prefill return
    logits for every prompt position."""
    model = _own_model()
    kept: dict = {}
    with keeping_logits(model, kept):
        _generate(model, prompt_length=7, new_tokens=1)  # the prefill is the only forward
    assert tuple(kept["last"].shape[:2]) == (1, 1)


def test_the_model_is_left_as_it_was():
    model = _own_model()
    with keeping_logits(model, {}):
        assert "forward" in model.__dict__
    assert "forward" not in model.__dict__  # the class's forward again

    def someone_elses(*args, **kwargs):  # e.g. accelerate's offloading hooks set one on the instance
        return type(model).forward(model, *args, **kwargs)

    model.forward = someone_elses
    kept: dict = {}
    with keeping_logits(model, kept):
        _generate(model, prompt_length=3, new_tokens=1)
    assert model.__dict__["forward"] is someone_elses
    assert kept["last"] is not None  # it wrapped the instance's forward, not the class's


def test_a_forward_hook_that_changes_the_logits_is_seen():
    """What the model returns, after its own hooks (the worker's NaN fault tests poison the
    head's output with one)."""
    model = _own_model()

    def poison(module, args, output):
        return torch.full_like(output, float("nan"))

    handle = model.lm_head.register_forward_hook(poison)
    kept: dict = {}
    try:
        with keeping_logits(model, kept):
            _generate(model, prompt_length=3, new_tokens=1)
    finally:
        handle.remove()
    assert torch.isnan(kept["last"]).all()


def _run_plain(model, tokenizer, stop_ids: list[int], new_tokens: int) -> tuple[str, RunningJob, str]:
    """(why it stopped, the running job, the text its stream delivered) for one lone reply."""

    async def run():
        job = GenerationJob(model="m", input_ids=[5, 6, 7, 8], stop_token_ids=stop_ids,
                            settings={"do_sample": False, "max_new_tokens": new_tokens}, user="u", channel="c")
        stream = open_stream(job, new_tokens)
        running = RunningJob(stream, tokenizer, new_tokens, footprint=0, text_every=0.1)
        outcome = await asyncio.to_thread(run_plain, model, None, running, 60.0, lambda: False)
        running.settle()
        running.close()
        text = "".join([delta async for delta in stream])
        return outcome, running, text

    return asyncio.run(run())


def _varied_model():
    """The tiny SmolLM2-shaped fixture with wider random weights: its greedy replies vary from
    token to token (with the fixture's own weights they repeat one token)."""
    model = _own_model()
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.5)
    return model


def test_a_reply_stops_at_its_stop_ids_and_never_at_the_models_own_eos():
    model, tokenizer = _varied_model(), ff.tokenizer("smollm2")
    _, free, _ = _run_plain(model, tokenizer, stop_ids=[], new_tokens=12)
    first = free.tokens[0]
    at = next(i for i, token in enumerate(free.tokens) if token != first)  # the first token unlike the first
    stop = free.tokens[at]

    model.generation_config.eos_token_id = [first]  # the model's default EOS: its very first token
    outcome, running, _ = _run_plain(model, tokenizer, stop_ids=[], new_tokens=12)
    assert outcome == "done" and running.tokens == free.tokens  # no stop ids: all 12 tokens

    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    outcome, running, text = _run_plain(model, tokenizer, stop_ids=[stop], new_tokens=12)
    assert outcome == "done" and running.tokens == free.tokens[:at + 1]  # ends at the stop id itself
    assert len(forwards) == at + 1  # and generate stopped there too: no forward after the stop token
    assert running.stats.stopped_by == "eos" and running.stats.new_tokens == at + 1
    assert text == tokenizer.decode(free.tokens[:at])  # the stop token's text is not shown
