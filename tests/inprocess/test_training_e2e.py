"""The training package end to end on a generated corpus and tiny models:
prepare -> train (both families) -> evaluate -> compare -> load in the model interface;
and a resumed run that repeats the uninterrupted one bit for bit."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import zipfile
from pathlib import Path

import pytest
from corpus import make_corpus
import torch
from safetensors.torch import load_file

from plotarmour.checkpoint import load_checkpoint
from plotarmour.tokenizer import fingerprint
from training import compare, evaluate, kaggle, prepare, train


TINY = {
    "bdh": {"n_layer": 2, "n_embd": 32, "n_head": 2, "mlp_internal_dim_multiplier": 4, "dropout": 0.1},
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "dropout": 0.1},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_e2e")
    (root / "train.txt").write_text(make_corpus(300, seed=5), encoding="utf-8")
    (root / "val.txt").write_text(make_corpus(40, seed=6), encoding="utf-8")
    assert prepare.main(["--train", str(root / "train.txt"), "--val", str(root / "val.txt"),
                         "--vocab-size", "300", "--out", str(root / "data"), "--quiet"]) == 0
    return root / "data"


def write_preset(path: Path, data: Path, **train) -> Path:
    settings = {"data": str(data), "block_size": 32, "batch_size": 4, "max_steps": 6, "warmup_steps": 2,
                "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 3, "eval_windows": 16, "log_interval": 1, "seed": 7}
    path.write_text(json.dumps({**TINY, "train": {**settings, **train}}))
    return path


def run_train(tmp: Path, data: Path, model: str, name: str, *extra: str) -> Path:
    preset = write_preset(tmp / f"{name}.json", data)
    argv = ["--model", model, "--config", str(preset), "--quiet", "--set", f"out={tmp / name / 'best'}",
            "--set", f"state_dir={tmp / name / 'state'}", "--set", f"log_dir={tmp / name / 'logs'}", *extra]
    assert train.main(argv) == 0
    return tmp / name


def losses(run: Path) -> list[tuple[str, str, str]]:
    [log] = (run / "logs").glob("*.csv")
    with open(log, newline="") as fh:
        return [(r["step"], r["train_loss"], r["val_loss"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("model", ["bdh", "gpt2"])
def test_train_evaluate_and_serve(tmp_path, data_dir, model, capsys):
    run = run_train(tmp_path, data_dir, model, "run")
    ckpt = load_checkpoint(run / "best")
    assert ckpt.model_type == model
    assert fingerprint(ckpt.tokenizer) == json.loads((data_dir / "meta.json").read_text())["tokenizer_fingerprint"]
    info = ckpt.run
    assert info["steps"] in (3, 6) and info["tokens_seen"] == info["steps"] * 4 * 32
    assert info["train_config"]["block_size"] == 32 and info["best_val_loss"] == info["val_loss"]
    rows = losses(run)
    assert [r[0] for r in rows] == [str(s) for s in range(0, 7)]  # step 0: the untrained model's validation
    assert rows[0][1] == "" and float(rows[0][2]) > float(rows[-1][2])
    assert float(rows[-1][1]) < float(rows[1][1])  # it learns something in 6 steps
    [log] = (run / "logs").glob("*.csv")
    with open(log, newline="") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert float(last["tokens_per_s"]) > 0 and float(last["grad_norm"]) > 0
    assert last["mfu"] == ""  # CPU: no peak to measure against unless peak_tflops is set
    assert info["train_flops_per_token"] > 0

    # The engine the servers use runs the trained weights.
    engine = ckpt.engine(max_context=64)
    session, logits = engine.open([1, 2, 3])
    assert logits.shape == (ckpt.config["vocab_size"],) and torch.isfinite(logits).all()
    assert engine.step({session: int(logits.argmax())}).shape == (1, ckpt.config["vocab_size"])

    # evaluate scores the same windows training validated on: the same loss.
    capsys.readouterr()
    assert evaluate.main([str(run / "best"), "--data", str(data_dir), "--json", "--max-windows", "16",
                          "--unigram", str(data_dir / "train.bin")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(info["best_val_loss"], rel=1e-5)
    # bits per byte are the same total loss over the scored text's bytes
    assert result["bits_per_byte"] * math.log(2) * result["bytes"] == pytest.approx(result["loss"] * result["tokens"])
    assert [b["band"] for b in result["bands"]] == ["0-31"]
    assert result["unigram"]["tokens"] == result["tokens"] == 16 * 32
    assert 0 < result["unigram"]["loss"] < math.log(300)
    # A text file is tokenized with the checkpoint's own tokenizer.
    text = data_dir.parent / "val.txt"
    assert evaluate.main([str(run / "best"), "--text", str(text), "--json", "--max-windows", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(result["loss"], rel=1e-6)


@pytest.mark.parametrize("model", ["bdh", "gpt2"])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, data_dir, model):
    straight = run_train(tmp_path, data_dir, model, "straight")
    cut = run_train(tmp_path, data_dir, model, "cut", "--stop-after", "4")
    assert len(losses(cut)) == 5  # steps 0-4
    assert train.main(["--resume", str(cut / "state"), "--quiet"]) == 0
    assert losses(cut) == losses(straight)  # same strings: bit-exact floats, dropout included
    a, b = load_file(str(straight / "state" / "model.safetensors")), load_file(str(cut / "state" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_when_validation_stalls(tmp_path, data_dir, capsys):
    # lr 0: the weights never change, so validation never improves after the first evaluation.
    run = run_train(tmp_path, data_dir, "gpt2", "stall", "--set", "lr=0", "--set", "min_lr=0",
                    "--set", "max_steps=20", "--set", "eval_interval=2", "--set", "patience=2")
    # evaluations at 0 (the best), 2 and 4: two without improvement
    assert "early stop at step 4" in capsys.readouterr().err
    assert load_checkpoint(run / "best").run["best_step"] == 0
    assert json.loads((run / "state" / "trainer_state.json").read_text())["progress"]["step"] == 4


def test_compare_writes_report_and_curves(tmp_path, data_dir, capsys):
    for model in ("bdh", "gpt2"):
        run_train(tmp_path, data_dir, model, model, "--set", "max_steps=3")
    out = tmp_path / "report" / "cmp.md"
    notes = tmp_path / "notes.md"
    notes.write_text("## Sweep\n")
    logs = [str(next((tmp_path / m / "logs").glob("*.csv"))) for m in ("bdh", "gpt2")]
    assert compare.main(["--bdh", str(tmp_path / "bdh" / "best"), "--gpt2", str(tmp_path / "gpt2" / "best"),
                         "--data", str(data_dir), "--samples", "2", "--max-new-tokens", "8",
                         "--logs", *logs, "--notes", str(notes), "--out", str(out), "--device", "cpu"]) == 0
    report = out.read_text()
    assert report.rstrip().endswith("## Sweep") and "bits/byte" in report and "| 0-31 |" in report
    assert "| BDH |" in report and "| GPT-2 |" in report and "unigram baseline" in report
    assert report.count("| Once upon a time |") == 1 and "cmp_curves.png" in report
    assert (out.parent / "cmp_curves.png").read_bytes()[:4] == b"\x89PNG"
    # Swapped directories are caught.
    assert compare.main(["--bdh", str(tmp_path / "gpt2" / "best"), "--gpt2", str(tmp_path / "bdh" / "best"),
                         "--data", str(data_dir), "--samples", "0", "--out", str(out)]) == 2
    assert "holds a bdh model" in capsys.readouterr().err


def test_bad_training_inputs_are_named(tmp_path, data_dir, capsys):
    preset = write_preset(tmp_path / "p.json", data_dir)
    cases = [
        (["--model", "bdh", "--config", str(preset), "--set", "learning_rate=1"], "unknown train setting"),
        (["--model", "gpt2", "--config", str(preset), "--set", "block_size=128"], "longer than the model's context"),
        (["--model", "bdh", "--config", str(preset), "--set", "data=" + str(tmp_path)], "meta.json: missing"),
        (["--model", "bdh", "--config", str(preset), "--set", "bdh.n_heads=3"], "bad bdh architecture"),
        (["--resume", str(tmp_path)], "trainer_state.json: missing"),
        (["--model", "bdh"], "give --model and --config"),
    ]
    for argv, message in cases:
        assert train.main([*argv, "--quiet"]) == 2, argv
        assert message in capsys.readouterr().err, message
    assert evaluate.main([str(tmp_path / "nope"), "--data", str(data_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_wrong_types_exit_2_naming_the_key(tmp_path, data_dir, capsys):
    preset = write_preset(tmp_path / "p.json", data_dir)
    cases = [("lr=fast", "'lr' must be a number"), ("batch_size=2.5", "'batch_size' must be an integer"),
             ('block_size="64"', "'block_size' must be an integer"), ("dtype=fp8", "'dtype' must be one of"),
             ("bdh.n_layer=two", "'n_layer' must be a number"), ("eval_interval=0", "must be positive")]
    for item, message in cases:
        assert train.main(["--model", "bdh", "--config", str(preset), "--set", item, "--quiet"]) == 2, item
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_output_directories_are_checked_before_training(tmp_path, data_dir, capsys):
    preset = write_preset(tmp_path / "p.json", data_dir)
    argv = ["--model", "gpt2", "--config", str(preset), "--quiet", "--set", f"state_dir={tmp_path / 'state'}",
            "--set", f"log_dir={tmp_path / 'logs'}"]
    (tmp_path / "a_file").write_text("x")
    assert train.main([*argv, "--set", f"out={tmp_path / 'a_file'}"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # refused before any training
    taken = tmp_path / "taken"  # e.g. the shipped pair
    taken.mkdir()
    (taken / "model.safetensors").write_text("precious")
    assert train.main([*argv, "--set", f"out={taken}"]) == 2
    assert "already holds files from another run" in capsys.readouterr().err
    assert (taken / "model.safetensors").read_text() == "precious"
    assert train.main([*argv, "--set", f"out={taken}", "--set", "max_steps=2", "--force"]) == 0
    assert load_checkpoint(taken).model_type == "gpt2"


def test_resume_takes_budget_overrides_and_refuses_model_changes(tmp_path, data_dir, capsys):
    run = run_train(tmp_path, data_dir, "gpt2", "r", "--stop-after", "3")
    state = str(run / "state")
    for item in ("gpt2.n_layer=3", "block_size=16", "lr=1"):
        assert train.main(["--resume", state, "--set", item, "--quiet"]) == 2
        assert "--resume cannot change" in capsys.readouterr().err
    assert train.main(["--resume", state, "--set", "max_steps=8", "--set", "eval_interval=4", "--quiet"]) == 0
    assert [r[0] for r in losses(run)] == [str(s) for s in range(0, 9)]
    assert load_checkpoint(run / "state").run["steps"] == 8


def test_data_from_another_tokenizer_is_refused(tmp_path, data_dir, capsys):
    other = tmp_path / "other"
    assert prepare.main(["--train", str(data_dir.parent / "train.txt"), "--vocab-size", "280",
                         "--out", str(other), "--quiet"]) == 0
    run = run_train(tmp_path, data_dir, "bdh", "t", "--stop-after", "2")
    assert train.main(["--resume", str(run / "state"), "--set", f"data={other}", "--quiet"]) == 2
    assert "another tokenizer than the checkpoint" in capsys.readouterr().err


def test_ctrl_c_stops_between_steps_and_resume_repeats_the_run(tmp_path, data_dir, monkeypatch, capsys):
    straight = run_train(tmp_path, data_dir, "gpt2", "straight")
    step = train.Trainer.train_step

    def interrupted_step(self):
        out = step(self)
        if self.progress.step == 4:  # the signal lands mid-step; the step still completes
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(train.Trainer, "train_step", interrupted_step)
    preset = write_preset(tmp_path / "c.json", data_dir)
    cut = tmp_path / "cut"
    argv = ["--model", "gpt2", "--config", str(preset), "--quiet", "--set", f"out={cut / 'best'}",
            "--set", f"state_dir={cut / 'state'}", "--set", f"log_dir={cut / 'logs'}"]
    assert train.main(argv) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("train: interrupted at step 4; state saved") and "--resume" in last
    assert json.loads((cut / "state" / "trainer_state.json").read_text())["progress"]["step"] == 4
    monkeypatch.setattr(train.Trainer, "train_step", step)
    assert train.main(["--resume", str(cut / "state"), "--quiet"]) == 0
    assert losses(cut) == losses(straight)


def test_ctrl_c_before_any_state_says_so_in_one_line(tmp_path, data_dir, monkeypatch, capsys):
    """Ctrl-C while the data loads or during the step-0 evaluation: exit 130 with one line,
    and no resume command for a state that does not exist yet, even where another run's
    state is being overwritten (--force)."""
    old = run_train(tmp_path, data_dir, "bdh", "old", "--stop-after", "3")
    capsys.readouterr()
    preset = write_preset(tmp_path / "c.json", data_dir)
    argv = ["--model", "bdh", "--config", str(preset), "--quiet", "--force", "--set", f"out={old / 'best'}",
            "--set", f"state_dir={old / 'state'}", "--set", f"log_dir={tmp_path / 'logs'}"]

    def ctrl_c(*_, **__):
        raise KeyboardInterrupt

    for where in ("build_model", "Trainer.evaluate"):
        with monkeypatch.context() as m:
            owner, _, name = where.rpartition(".")
            m.setattr(train.Trainer if owner else train, name, ctrl_c)
            assert train.main(argv) == 130
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--resume" not in err[0] and "Traceback" not in err[0], (where, err)


def test_a_killed_run_resumes_without_duplicate_log_rows(tmp_path, data_dir, monkeypatch):
    straight = run_train(tmp_path, data_dir, "bdh", "straight")
    step = train.Trainer.train_step

    def dies_at_step_5(self):
        if self.progress.step == 5:
            raise SystemExit("killed")  # after rows 0-5 were logged; the last state saved is step 3
        return step(self)

    monkeypatch.setattr(train.Trainer, "train_step", dies_at_step_5)
    with pytest.raises(SystemExit):
        run_train(tmp_path, data_dir, "bdh", "killed")
    killed = tmp_path / "killed"
    assert [r[0] for r in losses(killed)] == ["0", "1", "2", "3", "4", "5"]
    monkeypatch.setattr(train.Trainer, "train_step", step)
    assert train.main(["--resume", str(killed / "state"), "--quiet"]) == 0
    assert losses(killed) == losses(straight)


def test_init_continues_a_checkpoint_on_longer_windows(tmp_path, data_dir, capsys):
    first = run_train(tmp_path, data_dir, "gpt2", "first", "--set", "block_size=16")
    preset = write_preset(tmp_path / "i.json", data_dir)
    argv = ["--model", "gpt2", "--config", str(preset), "--quiet", "--init", str(first / "best"),
            "--set", f"out={tmp_path / 'longer'}", "--set", f"state_dir={tmp_path / 'longer-state'}",
            "--set", f"log_dir={tmp_path / 'longer-logs'}", "--set", "max_steps=2"]
    assert train.main(["--model", "bdh", *argv[2:]]) == 2
    assert "holds a gpt2 model, not bdh" in capsys.readouterr().err
    assert train.main([*argv, "--set", "gpt2.n_layer=3"]) == 2
    assert "takes the architecture from" in capsys.readouterr().err
    assert train.main(argv) == 0
    info = load_checkpoint(tmp_path / "longer-state").run
    assert info["initialized_from"]["block_size"] == 16 and info["train_config"]["block_size"] == 32
    assert info["architecture"] == TINY["gpt2"]
    # Dropout set in the checkpoint's config.json (it changes no weight) is what run.json records.
    config = json.loads((first / "best" / "config.json").read_text())
    config.update(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    (first / "best" / "config.json").write_text(json.dumps(config))
    assert train.main([*argv, "--force"]) == 0
    assert load_checkpoint(tmp_path / "longer-state").run["architecture"] == {**TINY["gpt2"], "dropout": 0.1}


def test_warns_when_the_run_ends_inside_its_warm_up(tmp_path, data_dir, capsys):
    run_train(tmp_path, data_dir, "gpt2", "short", "--set", "max_steps=2", "--set", "warmup_steps=5")
    assert "max_steps 2 <= warmup_steps 5" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for module in (prepare, train, evaluate, compare, kaggle):
        with pytest.raises(SystemExit) as exit_:
            module.main(["--help"])
        assert exit_.value.code == 0
        assert "usage: python -m training." in capsys.readouterr().out


def test_kaggle_bundle_holds_the_code_and_notebook(tmp_path):
    out = kaggle.make_bundle(tmp_path / "bundle.zip")
    names = set(zipfile.ZipFile(out).namelist())
    for needed in ("plotarmour/checkpoint.py", "training/train.py", "training/configs/kaggle_t4.json",
                   "training/kaggle.ipynb", "pyproject.toml"):
        assert needed in names
    assert not any("__pycache__" in n or n.endswith((".pyc", ".bin")) for n in names)
    nb = json.loads((Path(kaggle.ROOT) / "training" / "kaggle.ipynb").read_text())
    source = "".join("".join(c["source"]) for c in nb["cells"])
    for step in ("training.prepare", "training.train", "training.evaluate", "training.compare"):
        assert step in source
