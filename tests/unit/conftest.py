"""Fixtures of the unit tests: fake model servers (numpy only, no torch) for the gateway."""

import pytest

from fake_servers import FakeLanguageModel, FakeServer


@pytest.fixture(scope="module")
def fakes(tiny_tokenizer):
    """A fake GPT-2 and a fake BDH server on loopback, sharing the tiny tokenizer."""
    g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1))
    b = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="bdh", salt=2))
    yield g, b
    g.stop()
    b.stop()
