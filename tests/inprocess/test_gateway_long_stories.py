"""Stories longer than a model's context: when a model's session fills, the gateway
reopens it on the story's last part (context shift) and the story goes on."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from fake_servers import FakeLanguageModel, FakeServer, start_gateway
from harness import sse_events

PROMPT = "Once upon a time"
CONTEXT = {"gpt2": 24, "bdh": 40}


@pytest.fixture()
def servers(tiny_tokenizer):
    # Stories that never draw end-of-text run past both contexts, whatever the seed.
    g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1, max_context=CONTEXT["gpt2"],
                                     never_end=True))
    b = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="bdh", salt=2, max_context=CONTEXT["bdh"],
                                     never_end=True))
    yield g, b
    g.stop()
    b.stop()


def story(servers, body: dict, **settings) -> list[tuple[str, dict]]:
    """The events of one streamed story through a gateway with `settings`."""
    gw = start_gateway(servers[0].address, servers[1].address, **settings)
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as c, c.stream("POST", "/generate_stream", json=body) as r:
            assert r.status_code == 200, r.read()
            return list(sse_events(r))
    finally:
        gw.stop()


def replay(fake: FakeLanguageModel, prompt: list[int], tokens: list[int], keep: float) -> tuple[list[float], list[int]]:
    """Each token's probability under `fake` as a sliding window would give it, and the
    indices of the tokens drawn right after a slide."""
    limit = fake.max_context
    story = list(prompt)
    length = len(prompt) if len(prompt) <= limit else int(limit * keep)
    probs, slid = [], []
    for i, t in enumerate(tokens):
        probs.append(float(np.exp(fake.dist(story[-1], length)[t])))
        story.append(t)
        if length >= limit:  # full: reopened on the last `keep` part, which ends with t
            length = int(limit * keep)
            if i + 1 < len(tokens):
                slid.append(i + 1)
        else:
            length += 1
    return probs, slid


def test_a_story_goes_on_past_both_contexts_with_each_window_sliding(servers, tiny_tokenizer):
    events = story(servers, {"prompt": PROMPT, "max_new_tokens": 100, "temperature": 0.7, "seed": 1},
                   context_shift=0.5)
    tokens = [d for e, d in events if e == "token"]
    end = events[-1][1]
    assert events[-1][0] == "end" and end["finish_reason"] == "length" and len(tokens) == 100
    prompt = tiny_tokenizer.encode(PROMPT).ids
    ids = [t["id"] for t in tokens]
    for role, fake in (("gpt2", servers[0].model), ("bdh", servers[1].model)):
        probs, slid = replay(fake, prompt, ids, 0.5)
        # The probabilities the gateway reports are those of the windows a slide gives.
        assert [t[f"p_{role}"] for t in tokens] == pytest.approx(probs, rel=1e-5)
        assert slid and [i for i, t in enumerate(tokens) if role in t.get("context_shift", [])] == slid


def test_a_prompt_longer_than_a_context_is_read_through_its_last_window(servers, tiny_tokenizer):
    long_prompt = " ".join(["Tom had a red ball and a blue kite."] * 6)
    n = len(tiny_tokenizer.encode(long_prompt).ids)
    assert CONTEXT["gpt2"] < n < CONTEXT["bdh"] * 4
    events = story(servers, {"prompt": long_prompt, "max_new_tokens": 5, "seed": 1}, context_shift=0.5)
    first = next(d for e, d in events if e == "token")
    assert events[-1][0] == "end" and set(first["context_shift"]) >= {"gpt2"}
    assert servers[0].model.last_prompt == tiny_tokenizer.encode(long_prompt).ids[-CONTEXT["gpt2"] // 2:]


def test_without_context_shift_a_story_ends_at_the_smaller_context(servers):
    events = story(servers, {"prompt": PROMPT, "max_new_tokens": 100, "seed": 1}, context_shift=0.0)
    tokens = [d for e, d in events if e == "token"]
    assert events[-1][1]["finish_reason"] == "length" and len(tokens) < 100
    assert not any("context_shift" in t for t in tokens)
