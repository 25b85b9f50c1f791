"""Fixtures every test layer shares: a corpus, a tokenizer and a tiny checkpoint pair,
all made here so tests need no network, no GPU and no ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import make_corpus

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Each folder says what its tests start: inprocess/ (everything in the test process: fakes
# and servers on threads), processes/ (real server processes), browser/ (Chromium),
# deploy/ (the deployment tools). Markers follow the folder, so a run can choose:
#   pytest -m "not slow"      the in-process loop (anything else starts processes or a browser)
FOLDER_MARKERS = {"processes": ("slow",), "browser": ("slow", "browser"), "deploy": ("slow", "deploy")}
FILE_MARKERS = {"test_notebook_kaggle.py": "notebook", "test_training_ddp.py": "ddp"}


def pytest_collection_modifyitems(items):
    for item in items:
        for marker in FOLDER_MARKERS.get(item.path.parent.name, ()):
            item.add_marker(marker)
        if item.path.name in FILE_MARKERS:
            item.add_marker(FILE_MARKERS[item.path.name])


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(corpus_file):
    from plotarmour.tokenizer import train_tokenizer

    return train_tokenizer([corpus_file], vocab_size=320)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """Untrained BDH and GPT-2 checkpoints (about 50k parameters each) on one tokenizer."""
    import torch

    from plotarmour.checkpoint import save_checkpoint
    from plotarmour.models import BDH, BDHConfig, gpt2_config
    from plotarmour.tokenizer import eot_id
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    vocab = tiny_tokenizer.get_vocab_size()
    bdh = BDH(BDHConfig(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4, vocab_size=vocab, dropout=0.0))
    gpt2 = GPT2LMHeadModel(gpt2_config(vocab_size=vocab, eot_id=eot_id(tiny_tokenizer), n_layer=2, n_embd=32,
                                       n_head=2, n_positions=256, dropout=0.0))
    return {
        "bdh": save_checkpoint(root / "bdh", bdh, tiny_tokenizer, {"note": "untrained test model"}),
        "gpt2": save_checkpoint(root / "gpt2", gpt2, tiny_tokenizer, {"note": "untrained test model"}),
    }
