"""bench/bench_validator_counterfactual.py runs end to end on the tiny pair, and its swaps
are the ones its docstring describes."""

from __future__ import annotations

import json

import pytest

from bench import bench_validator_counterfactual as bench


@pytest.fixture(scope="module")
def scorer(tiny_pair):
    return bench.Scorer(tiny_pair["gpt2"].parent)


def test_swaps_put_context_words_into_the_draft(scorer):
    swaps = dict(bench.swap_candidates(scorer, "Lily had a red ball.", " She threw the blue ball."))
    assert swaps[" She threw the red ball."] == "context"
    assert swaps[" Lily threw the blue ball."] == "context"  # capitalised like the word it replaces
    # words the draft already has are never candidates, and no swap leaves the draft as it was
    assert " She threw the ball ball." not in swaps or swaps[" She threw the ball ball."] == "expected"
    assert " She threw the blue ball." not in swaps


def test_measures_are_relative_to_the_draft(scorer):
    swaps = bench.swap_candidates(scorer, "Tom had a cat.", " He fed the dog.")
    assert (" He fed the cat.", "context") in swaps
    m = bench.swap_measures(scorer, "Tom had a cat.", " He fed the dog.")
    assert [f["source"] for f in m] == [s for _, s in swaps]  # one row per swap, in order
    for f in m:
        for model in bench.MODELS:
            assert f[f"{model}_shift"] == pytest.approx(f[f"{model}_gain"] - f[f"{model}_prior"])


def test_the_bench_prints_every_rule(tiny_pair, tmp_path, capsys):
    triples = tmp_path / "triples.jsonl"
    rows = [{"kind": "colour", "context": "Lily had a red ball.", "consistent": " She threw the red ball.",
             "contradictory": " She threw the blue ball."},
            {"kind": "place", "context": "Ben was in the kitchen.", "consistent": " He ate in the kitchen.",
             "contradictory": " He ate in the garden."}] * 2
    triples.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert bench.main(["--checkpoints", str(tiny_pair["gpt2"].parent), "--triples", str(triples)]) == 0
    out = capsys.readouterr().out
    for name in bench.RULES:
        assert name in out
    assert out.count("forward") >= 2 and "reverse" in out
