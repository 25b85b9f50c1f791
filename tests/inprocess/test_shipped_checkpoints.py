"""The shipped pair in checkpoints/: it loads, shares one tokenizer, stays small and fair,
and says what data and settings made it (checkpoints/REPORT.md tells the story in words)."""

import json
from pathlib import Path

import pytest

from plotarmour.checkpoint import load_checkpoint
from plotarmour.tokenizer import fingerprint

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
FAMILIES = ("gpt2", "bdh")


@pytest.fixture(scope="module")
def shipped():
    return {name: load_checkpoint(CHECKPOINTS / name) for name in FAMILIES}


def run_of(name: str) -> dict:
    return json.loads((CHECKPOINTS / name / "run.json").read_text())


def test_the_pair_loads_and_shares_one_tokenizer(shipped):
    prints = {name: fingerprint(c.tokenizer) for name, c in shipped.items()}
    assert len(set(prints.values())) == 1, prints
    for name, c in shipped.items():
        assert c.model_type == name
        # run.json names the tokenizer the model was trained with: the one beside it.
        assert run_of(name)["tokenizer_fingerprint"] == prints[name]
        assert c.config["vocab_size"] == c.tokenizer.get_vocab_size() == 4096


def test_the_pair_is_small_and_its_sizes_comparable(shipped):
    params = {name: run_of(name)["num_parameters"] for name in FAMILIES}
    for name, c in shipped.items():
        assert sum(t.numel() for t in c.model.parameters()) == params[name]
        assert (CHECKPOINTS / name / "model.safetensors").stat().st_size < 25 * 2**20
    assert max(params.values()) / min(params.values()) <= 1.5, params


@pytest.mark.parametrize("name", FAMILIES)
def test_run_json_says_what_data_and_settings_made_it(shipped, name):
    run = run_of(name)
    splits = run["data"]["splits"]
    sources = {Path(s).name for s in splits["train"]["sources"]}
    # All the TinyStories training text the project had: the 2 MB part and the extra stories.
    assert {"TinyStories-train-part.txt", "TinyStories-train-extra.txt"} <= sources, sources
    assert splits["train"]["tokens"] > 3_500_000
    assert [Path(s).name for s in splits["val"]["sources"]] == ["TinyStories-valid-part.txt"]
    cfg = run["train_config"]
    for key in ("block_size", "batch_size", "lr", "min_lr", "max_tokens", "weight_decay", "seed"):
        assert key in cfg, key
    assert cfg["block_size"] == 512  # positions 256-511 trained, as served
    assert run["model_type"] == name and run["tokens_seen"] > 0
    assert run["best_val_loss"] <= run["val_loss"] + 1e-9
    # The architecture run.json records is the one config.json builds.
    config = shipped[name].config
    for key, value in run["architecture"].items():
        if key != "dropout":  # GPT-2's config spells it resid/embd/attn_pdrop
            assert config[key] == value, (key, config[key], value)
    # A continued run says what it continued from.
    assert run.get("initialized_from") is None or "checkpoint" in run["initialized_from"]
