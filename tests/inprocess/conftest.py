"""Fixtures of the in-process tests: fake model servers on threads (numpy only, no torch)
for the gateway."""

import httpx
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


@pytest.fixture()
def client(gateway):
    """An HTTP client on the module's `gateway` fixture."""
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c

