"""training/kaggle.ipynb, executed top to bottom as Kaggle would run it, on a CPU with a
tiny preset and generated stories: the Kaggle folders (/kaggle/input, /kaggle/working)
are moved into a temporary directory through the notebook's parameters."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest
from corpus import make_corpus

from training import kaggle

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(kaggle.ROOT) / "training" / "kaggle.ipynb"
TINY_PRESET = {
    "bdh": {"n_layer": 2, "n_embd": 32, "n_head": 2, "mlp_internal_dim_multiplier": 4, "dropout": 0.0},
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "dropout": 0.0},
    "train": {"block_size": 32, "batch_size": 4, "max_steps": 4, "warmup_steps": 1, "lr": 3e-3, "min_lr": 3e-4,
              "eval_interval": 2, "eval_windows": 8, "log_interval": 1, "seed": 3},
}


@pytest.fixture(scope="module")
def kaggle_roots(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kaggle")
    code = root / "input" / "plotarmour-code"  # the bundle as Kaggle shows it: unpacked
    zipfile.ZipFile(kaggle.make_bundle(root / "bundle.zip")).extractall(code)
    stories = root / "input" / "tinystories"
    stories.mkdir()
    (stories / "TinyStories-train.txt").write_text(make_corpus(300, seed=1), encoding="utf-8")
    (stories / "TinyStories-valid.txt").write_text(make_corpus(40, seed=2), encoding="utf-8")
    (root / "working").mkdir()
    (root / "tiny.json").write_text(json.dumps(TINY_PRESET))
    return {"root": root, "input": root / "input", "working": root / "working", "stories": stories,
            "preset": root / "tiny.json"}


def execute(roots: dict[str, Path], **params) -> nbformat.NotebookNode:
    """Run the notebook with `params` set after its parameters cell, as papermill injects them."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [at] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    values = {"KAGGLE_INPUT": str(roots["input"]), "KAGGLE_WORKING": str(roots["working"]),
              "TINYSTORIES": str(roots["stories"]), "PRESET": str(roots["preset"]), "MAX_TOKENS": None,
              "VOCAB_SIZE": 300, "TOKENIZER_SAMPLE_MB": 1, "SAMPLES": 1, "MAX_EVAL_WINDOWS": 8, "INSTALL": False,
              **params}
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items())))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(roots["root"])}}).execute()
    return nb


def text_of(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_notebook_runs_top_to_bottom_on_cpu(kaggle_roots, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the kernel and every step it starts
    nb = execute(kaggle_roots)
    out = text_of(nb)
    work = kaggle_roots["working"] / "plotarmour-run"
    assert "NO GPU" in out  # said loudly, not silently trained on the CPU
    assert f"--resume {work / 'state' / 'bdh'}" in out
    assert "transformers" in out and "torch" in out  # versions printed
    for model in ("bdh", "gpt2"):
        assert (work / "checkpoints" / model / "model.safetensors").is_file()
        assert (work / "state" / model / "trainer_state.json").is_file()  # resumable after the session
        assert "--device cpu" in out
    assert "| BDH |" in (work / "checkpoints" / "REPORT.md").read_text()
    shown = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data"]
    assert any("image/png" in o["data"] for o in shown) and any("text/markdown" in o["data"] for o in shown)
    assert zipfile.ZipFile(kaggle_roots["working"] / "plotarmour-checkpoints.zip").namelist()


def test_a_failing_step_stops_the_notebook(kaggle_roots, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(nbclient.exceptions.CellExecutionError) as e:
        execute(kaggle_roots, RUN_DIR="broken", PRESET="training/configs/no-such-preset.json")
    assert "CalledProcessError" in str(e.value)
    assert not (kaggle_roots["working"] / "broken" / "checkpoints" / "REPORT.md").exists()


def notebook_function(name: str, **scope):
    """One function of the notebook, defined in `scope` (its cell's other code is not run)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [cell] = [c for c in nb.cells if f"def {name}(" in c.source]
    [node] = [n for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef) and n.name == name]
    exec(ast.get_source_segment(cell.source, node), scope)
    return scope[name]


def test_finds_the_bundle_zipped_or_unpacked(tmp_path):
    find_bundle = notebook_function("find_bundle", Path=Path, zipfile=zipfile)
    zipped = tmp_path / "zipped" / "some-dataset"
    zipped.mkdir(parents=True)
    bundle = kaggle.make_bundle(zipped / "plotarmour-kaggle.zip")
    assert find_bundle(tmp_path / "zipped") == bundle
    unpacked = tmp_path / "unpacked" / "plotarmour-code"
    zipfile.ZipFile(bundle).extractall(unpacked)
    assert find_bundle(tmp_path / "unpacked") == unpacked
    with pytest.raises(FileNotFoundError, match="no PlotArmour bundle"):
        find_bundle(tmp_path / "empty")


def test_takes_tinystories_by_directory_whole_files_first(tmp_path):
    for name in ("TinyStories-train-part.txt", "TinyStories-valid-part.txt", "TinyStories-train.txt",
                 "TinyStories-valid.txt"):
        (tmp_path / "a" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "a" / name).write_text("Once.\n")
    params = {"Path": Path, "TINYSTORIES_TRAIN": "", "TINYSTORIES_VALID": ""}
    pick = notebook_function("tinystories_files", **params, TINYSTORIES=str(tmp_path / "a"))
    assert [f.name for f in pick()] == ["TinyStories-train.txt", "TinyStories-valid.txt"]
    # Kaggle's GPT-4 edition is found too
    for kind in ("train", "valid"):
        (tmp_path / "b" / f"TinyStoriesV2-GPT4-{kind}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "b" / f"TinyStoriesV2-GPT4-{kind}.txt").write_text("Once.\n")
    pick = notebook_function("tinystories_files", **params, TINYSTORIES=str(tmp_path / "b"))
    assert [f.name for f in pick()] == ["TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"]
    # the validation file that goes with the training one, not another edition's
    (tmp_path / "b" / "TinyStoriesV2-GPT4-train.txt").unlink()
    (tmp_path / "b" / "TinyStories-train.txt").write_text("Once.\n")
    (tmp_path / "b" / "TinyStories-valid.txt").write_text("Once.\n")
    assert [f.name for f in pick()] == ["TinyStories-train.txt", "TinyStories-valid.txt"]
    # one file by path without the other is an error, not a silent download
    pick = notebook_function("tinystories_files", **{**params, "TINYSTORIES_VALID": str(tmp_path / "a" / "x")},
                             TINYSTORIES="")
    with pytest.raises(ValueError, match="give both"):
        pick()


def test_one_tinystories_path_without_the_other_stops_the_notebook(tmp_path):
    """Only TINYSTORIES_VALID set: the data cell refuses, instead of downloading TinyStories."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [cell] = [c for c in nb.cells if "def tinystories_files(" in c.source]
    steps = []
    scope = {"Path": Path, "sys": __import__("sys"), "WORK": tmp_path, "run": lambda *a: steps.append(a),
             "TINYSTORIES": "", "TINYSTORIES_TRAIN": "", "TINYSTORIES_VALID": str(tmp_path / "valid.txt"),
             "VOCAB_SIZE": 300, "TOKENIZER_SAMPLE_MB": 1}
    with pytest.raises(ValueError, match="give both"):
        exec(cell.source, scope)
    assert steps == []
