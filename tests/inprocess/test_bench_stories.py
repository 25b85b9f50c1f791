"""bench/bench_stories.py runs end to end on the tiny pair, writes each story as the
gateway's sampling does, and its story measures say what its docstring says."""

from __future__ import annotations

import json

from bench import bench_stories as bench


def test_measures_of_a_story():
    m = bench.measures('Tom ran to the park. "Hi," said Tim. Tom ran to the park.', "Tom")
    assert m["name_kept"] == 1.0 and m["drift"] == 1.0  # "Tim" inside a sentence, one letter away
    assert 0 < m["distinct2"] < 1 and m["rep4"] > 0  # "tom ran to the park" comes back
    # A name that opens a sentence is not counted as drift ("She" is one edit from "Sue").
    assert bench.measures("She went home. Sue smiled.", "Sue")["drift"] == 0.0
    assert bench.measures("A dog. A cat.", "Mia") == {"distinct2": 1.0, "rep4": 0.0, "name_kept": 0.0, "drift": 0.0}


def test_the_cells_cover_the_weights_both_blends_and_every_preset():
    from services.gateway.presets import DEFAULT_PRESET, PRESETS

    cells = bench.cells(["blend", "presets"])
    blend = [(c.blend, c.logic_weight) for c in cells if c.section == "blend"]
    assert blend == [("linear", w) for w in bench.WEIGHTS] + [("geometric", w) for w in (0.25, 0.5, 0.75)]
    assert [c.label for c in cells if c.section == "presets"] == [
        name + (" (default)" if name == DEFAULT_PRESET else "") for name in PRESETS]
    d = PRESETS[DEFAULT_PRESET]
    assert all((c.temperature, c.top_p, c.top_k) == (d.temperature, d.top_p, d.top_k)
               for c in cells if c.section == "blend")


def test_it_runs_on_the_tiny_pair(tiny_pair, tmp_path, capsys):
    out = tmp_path / "cells.json"
    assert bench.main(["--checkpoints", str(tiny_pair["gpt2"].parent), "--seeds", "1", "--max-new-tokens", "6",
                       "--sections", "presets", "--reference", str(tmp_path / "none.txt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 prompts × 1 seeds = 10 stories per cell" in printed and "balanced (default)" in printed
    cells = json.loads(out.read_text())
    assert len(cells) == 3 and all(c["figures"]["stories"] == 10 and c["figures"]["tokens"] <= 6 for c in cells)
    assert all(c["figures"]["fluency_gpt2"] < 0 and 0 <= c["figures"]["rep4"] <= 1 for c in cells)
