"""training.train's pure parts: presets and overrides, the schedule, optimizer state files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.config import ConfigError, resume_config
from training.train import (TrainConfig, load_preset, lr_at, optimizer_from_files, optimizer_to_files,
                            parse_override)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("model", ["bdh", "gpt2"])
def test_every_preset_loads(path, model):
    arch, cfg = load_preset(path, model)
    assert cfg.max_steps > 0 and "{model}" not in cfg.out
    if not arch:  # a continuation preset (--init): the architecture is the checkpoint's
        return
    assert arch["n_embd"] > 0
    if model == "gpt2":
        assert arch["n_positions"] >= cfg.block_size
    else:
        assert arch["mlp_internal_dim_multiplier"] * arch["n_embd"] % arch["n_head"] == 0


def test_presets_cover_cpu_kaggle_and_large_gpu():
    assert {"tiny_cpu", "kaggle_t4", "gpu_large"} <= {p.stem for p in CONFIGS}


def test_overrides(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"bdh": {"n_layer": 2}, "gpt2": {"n_layer": 3}, "train": {"lr": 0.1}}))
    arch, cfg = load_preset(preset, "bdh", ["lr=3e-4", "bdh.n_layer=4", "gpt2.n_layer=9", "out=x/{model}"])
    assert arch == {"n_layer": 4} and cfg.lr == 3e-4 and cfg.out == "x/bdh"
    assert parse_override("data=some/dir") == (["data"], "some/dir")  # not JSON: kept as text
    with pytest.raises(ValueError, match="unknown train setting"):
        load_preset(preset, "bdh", ["learning_rate=1"])
    with pytest.raises(ValueError, match="expected key=value"):
        load_preset(preset, "bdh", ["lr"])
    preset.write_text(json.dumps({"gpt2": {}}))
    with pytest.raises(ValueError, match="no 'bdh' architecture block"):
        load_preset(preset, "bdh")
    with pytest.raises(ValueError, match="config file not found"):
        load_preset(tmp_path / "nope.json", "bdh")


def test_a_family_train_block_wins_over_train_and_loses_to_set(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"bdh": {"n_layer": 2}, "gpt2": {"n_layer": 3},
                                  "train": {"block_size": 64, "batch_size": 8, "max_tokens": 4096},
                                  "bdh_train": {"block_size": 128, "batch_size": 4}}))
    _, bdh = load_preset(preset, "bdh")
    _, gpt2 = load_preset(preset, "gpt2")
    assert (bdh.block_size, bdh.batch_size, bdh.max_tokens) == (128, 4, 4096)
    assert (gpt2.block_size, gpt2.batch_size) == (64, 8)
    _, bdh = load_preset(preset, "bdh", ["block_size=256"])
    assert bdh.block_size == 256
    preset.write_text(json.dumps({"bdh": {}, "train": {}, "bdh_train": {"block_size": "long"}}))
    with pytest.raises(ConfigError, match="'block_size' must be an integer"):
        load_preset(preset, "bdh")


@pytest.mark.parametrize("blocks", [{"bdh_trian": {}}, {"bdh_train": [1]}, {"extra": 1}])
def test_a_misspelt_or_malformed_block_is_refused(tmp_path, blocks):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"bdh": {"n_layer": 2}, "train": {}, **blocks}))
    with pytest.raises(ConfigError, match="unknown block|must be a JSON object"):
        load_preset(preset, "bdh")


@pytest.mark.parametrize("name", ["kaggle_t4", "gpu_large"])
def test_gpu_presets_train_bdh_on_longer_windows_than_gpt2(name):
    """Stories on the page run past 512 tokens; BDH's state has no length limit, GPT-2's
    window is its n_positions. Both see the same tokens per optimizer step."""
    path = next(p for p in CONFIGS if p.stem == name)
    gpt2_arch, gpt2 = load_preset(path, "gpt2")
    _, bdh = load_preset(path, "bdh")
    assert 512 <= gpt2.block_size == gpt2_arch["n_positions"] < bdh.block_size
    assert bdh.grad_checkpointing  # without it BDH's activations outgrow the GPU (see the preset)
    tokens = lambda c: c.block_size * c.batch_size * c.grad_accum  # noqa: E731
    assert tokens(bdh) == tokens(gpt2)


def test_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, cfg) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[110] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.55)


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = optimizer_to_files(opt)
    save_file(tensors, str(tmp_path / "s.safetensors"))
    (tmp_path / "s.json").write_text(json.dumps(meta))

    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    optimizer_from_files(fresh, load_file(str(tmp_path / "s.safetensors")), json.loads((tmp_path / "s.json").read_text()))
    a, b = opt.state_dict(), fresh.state_dict()
    assert b["param_groups"][0]["lr"] == 0.01
    for idx, state in a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["state"][idx][name]), (idx, name)


@pytest.mark.parametrize("item, message", [
    ("lr=fast", "'lr' must be a number, got \"fast\" (str)"),
    ("batch_size=2.5", "'batch_size' must be an integer, got 2.5 (float)"),
    ('block_size="64"', "'block_size' must be an integer, got \"64\" (str)"),
    ("max_tokens=true", "'max_tokens' must be an integer or null"),
    ("grad_checkpointing=1", "'grad_checkpointing' must be true or false"),
    ("compile=maybe", "'compile' must be one of"),
    ("warmup_steps=-1", "must not be negative"),
    ("bdh.n_embd=wide", "bdh architecture setting 'n_embd' must be a number"),
    ("bdh.n_layer=2.5", "'n_layer' must be a positive integer, got 2.5"),
    ("bdh.n_head=0", "'n_head' must be a positive integer, got 0"),
    ("bdh.dropout=1", "'dropout' must be in [0, 1), got 1"),
    ("seed=-1", "'seed' must not be negative"),
    ("threads=-1", "'threads' must be positive or null"),
    ("peak_tflops=-5", "'peak_tflops' must be positive or null"),
])
def test_wrong_types_are_named_with_the_expected_type(tmp_path, item, message):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"bdh": {"n_layer": 2}, "train": {}}))
    with pytest.raises(ConfigError) as e:
        load_preset(preset, "bdh", [item])
    assert message in str(e.value)


def test_good_values_pass(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"bdh": {"n_layer": 2}, "train": {}}))
    _, cfg = load_preset(preset, "bdh", ["lr=3", "max_tokens=null", "compile=true", "grad_checkpointing=true"])
    assert cfg.lr == 3 and cfg.max_tokens is None and cfg.compile is True and cfg.grad_checkpointing


def test_resume_overrides():
    saved = {**TrainConfig().__dict__, "max_tokens": 1000}
    cfg = resume_config(saved, "bdh", ["max_steps=50", "eval_interval=5", "out=elsewhere", "lr=0.001"])
    assert cfg.max_steps == 50 and cfg.max_tokens is None and cfg.out == "elsewhere"  # lr unchanged: allowed
    cfg = resume_config(saved, "bdh", ["max_tokens=5000"])
    assert cfg.max_tokens == 5000
    for item in ("bdh.n_layer=3", "batch_size=2", "seed=1", "lr=0.5"):
        with pytest.raises(ConfigError, match="--resume cannot change"):
            resume_config(saved, "bdh", [item])
