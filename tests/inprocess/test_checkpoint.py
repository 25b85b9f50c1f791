"""Checkpoint directories: round trips, Hugging Face compatibility, and errors that name the file."""

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from plotarmour.checkpoint import CheckpointError, load_checkpoint
from plotarmour.tokenizer import fingerprint

IDS = torch.tensor([[1, 5, 9, 2, 7, 3]])


def logits_of(model):
    with torch.no_grad():
        out = model(IDS)
    return out[0] if isinstance(out, tuple) else out.logits


@pytest.mark.parametrize("kind", ["bdh", "gpt2"])
def test_round_trip_gives_identical_logits(tiny_pair, tiny_tokenizer, kind):
    ck = load_checkpoint(tiny_pair[kind])
    assert ck.model_type == kind
    again = load_checkpoint(tiny_pair[kind])
    assert torch.equal(logits_of(ck.model), logits_of(again.model))
    assert ck.run["tokenizer_fingerprint"] == fingerprint(tiny_tokenizer) == fingerprint(ck.tokenizer)
    assert ck.engine().info.model_type == kind


def test_round_trip_preserves_trained_weights(tmp_path, tiny_pair):
    from plotarmour.checkpoint import save_checkpoint

    ck = load_checkpoint(tiny_pair["bdh"])
    with torch.no_grad():
        ck.model.encoder.add_(0.5)  # weights that differ from any fresh init
    save_checkpoint(tmp_path / "b", ck.model, ck.tokenizer, {"steps": 7})
    back = load_checkpoint(tmp_path / "b")
    assert torch.equal(logits_of(back.model), logits_of(ck.model))
    assert back.run["steps"] == 7


def test_gpt2_directory_is_a_hugging_face_directory(tiny_pair):
    ours = load_checkpoint(tiny_pair["gpt2"]).model
    theirs = GPT2LMHeadModel.from_pretrained(tiny_pair["gpt2"]).eval()
    assert torch.equal(logits_of(ours), logits_of(theirs))


def test_no_pickle_files_are_written(tiny_pair):
    for d in tiny_pair.values():
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "run.json", "tokenizer.json"]


def copy_of(src, tmp_path):
    import shutil

    return shutil.copytree(src, tmp_path / src.name)


@pytest.mark.parametrize("kind", ["bdh", "gpt2"])
@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(tiny_pair, tmp_path, kind, missing):
    d = copy_of(tiny_pair[kind], tmp_path)
    (d / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        load_checkpoint(d)


def test_truncated_weights_are_named(tiny_pair, tmp_path):
    d = copy_of(tiny_pair["bdh"], tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        load_checkpoint(d)


@pytest.mark.parametrize("kind,key", [("bdh", "n_embd"), ("gpt2", "n_embd")])
def test_weights_that_do_not_fit_the_config_are_named(tiny_pair, tmp_path, kind, key):
    d = copy_of(tiny_pair[kind], tmp_path)
    config = json.loads((d / "config.json").read_text())
    config[key] *= 2
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match config\.json.*shape"):
        load_checkpoint(d)


def test_unknown_model_type_and_bad_json_are_named(tiny_pair, tmp_path):
    d = copy_of(tiny_pair["bdh"], tmp_path)
    (d / "config.json").write_text(json.dumps({"model_type": "rnn"}))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'rnn'"):
        load_checkpoint(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_tokenizer_larger_than_the_model_vocab_is_refused(tiny_tokenizer, tmp_path):
    from plotarmour.checkpoint import save_checkpoint
    from plotarmour.models import BDH, BDHConfig

    small = BDH(BDHConfig(n_layer=1, n_embd=8, n_head=1, mlp_internal_dim_multiplier=2,
                          vocab_size=tiny_tokenizer.get_vocab_size() - 1))
    d = save_checkpoint(tmp_path / "b", small, tiny_tokenizer)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: tokenizer has \d+ tokens but config\.json"):
        load_checkpoint(d)
