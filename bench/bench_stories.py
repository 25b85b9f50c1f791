"""What the blend does to a story, measured with the two models themselves.

    python bench/bench_stories.py [--checkpoints checkpoints] [--seeds 3] [--max-new-tokens 256]
                                  [--sections blend,presets,sampling] [--samples] [--json out.json]

Writes a fixed set of stories per cell (10 prompts, each naming one character, times
`--seeds` seeds: 30 stories at the default) exactly as the gateway writes them (the same
`blend_rows` and `sample_rows`, one batch of stories stepped together, each with its own
seed) and prints, per cell, what a storyteller would look at:

  fluency   mean log-probability per generated token (nats) under each model, scored
            afresh by teacher forcing (not the probabilities the draw used, which depend
            on temperature and cuts); "both" is their mean. Higher reads better, but a
            story that loops scores high too: read it beside the next two.
  distinct-2, rep-4
            distinct word bigrams over all bigrams of a story, and the fraction of word
            4-grams that occur more than once in it (degeneration: loops and stock phrases).
  name kept the prompt's character is named again in the story.
  drift     a capitalised word one edit away from the character's name appears
            ("Tom" becomes "Tim", "Lily" becomes "Lilly") inside a sentence, where a capital
            marks a name ("She" opening a sentence is one edit from "Sue" but no drift; a
            drifted name that only ever opens sentences is missed, so this undercounts).
  ended     the story ends with the end-of-text token before the token limit.

Sections: `blend` sweeps logic_weight 0, 0.25, 0.5, 0.75, 1 for the linear and the
geometric blend at the page's default sampling (at 0 and 1 the two blends are the same
distribution, so those cells are written once); `presets` measures the page's presets
(services/gateway/static/js/presets.js); `sampling` sweeps temperature and top-p at the
default preset's weight, which is how the defaults were chosen. Every cell uses the same
prompts and seeds, so cells differ only in their setting. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plotarmour.checkpoint import load_checkpoint  # noqa: E402
from plotarmour.sampling import SamplingParams, blend_rows, make_rng, sample_rows  # noqa: E402
from plotarmour.tokenizer import eot_id, fingerprint  # noqa: E402
from services.gateway.presets import read_presets  # noqa: E402

# (the character's name, a TinyStories-like opening that names them once)
PROMPTS = [
    ("Lily", "Once upon a time, there was a little girl named Lily. She loved to play in the garden."),
    ("Tom", "Tom had a red ball. One day, he went to the park with his mom."),
    ("Mia", "Mia was a small cat who lived in a big house."),
    ("Ben", "Ben and his dad went to the lake to catch a fish."),
    ("Sue", "Once upon a time, a girl named Sue found a shiny key under her bed."),
    ("Max", "Max was a happy dog. Every morning, he ran to the gate to wait for the mail."),
    ("Anna", "Anna wanted to bake a cake for her grandma."),
    ("Tim", "Tim was sad because it was raining and he could not go outside."),
    ("Sara", "One day, Sara saw a little bird with a hurt wing."),
    ("Jack", "Jack had a new toy car. He showed it to his friend at school."),
]
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# The sampling sweep: (temperature, top_p, top_k); (1, 1, 0) is plain sampling.
SAMPLING_GRID = [(1.0, 1.0, 0), (1.0, 0.95, 0), (1.0, 0.9, 0), (0.9, 0.95, 0), (0.8, 1.0, 0), (0.8, 0.95, 0),
                 (0.8, 0.9, 0), (0.7, 0.9, 0), (0.7, 0.9, 20), (0.5, 1.0, 0)]
WORD = re.compile(r"[A-Za-z']+")


@dataclass(frozen=True)
class Cell:
    section: str
    label: str
    logic_weight: float
    blend: str
    temperature: float
    top_p: float
    top_k: int

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


# ---- writing stories ------------------------------------------------------------------

def write_stories(engines: dict, prompts: list[list[int]], seeds: list[int], cell: Cell, eot: int,
                  max_new: int) -> list[list[int]]:
    """One story per (prompt, seed), all stepped together as the gateway's scheduler does:
    each model gives its distribution, the rows are blended, then drawn with each story's
    own generator. A story stops at end-of-text (kept) or at max_new tokens."""
    stories = [(p, s) for p in prompts for s in seeds]
    rngs = [make_rng(s) for _, s in stories]
    params = [cell.sampling] * len(stories)
    sessions = {name: [] for name in engines}
    rows = {name: [] for name in engines}
    for name, engine in engines.items():
        for prompt, _ in stories:
            sid, logits = engine.open(prompt)
            sessions[name].append(sid)
            rows[name].append(logits)
    out: list[list[int]] = [[] for _ in stories]
    live = list(range(len(stories)))
    try:
        while live:
            g = torch.stack([rows["gpt2"][i] for i in live]).numpy()
            b = torch.stack([rows["bdh"][i] for i in live]).numpy()
            p = blend_rows(g, b, [cell.logic_weight] * len(live), [cell.blend] * len(live))
            ids = sample_rows(p, [params[i] for i in live], [rngs[i] for i in live])
            for i, t in zip(live, ids):
                out[i].append(int(t))
            live = [i for i in live if out[i][-1] != eot and len(out[i]) < max_new]
            for name, engine in engines.items():
                if live:
                    logits = engine.step({sessions[name][i]: out[i][-1] for i in live})
                    for i, row in zip(live, logits):
                        rows[name][i] = row
    finally:
        for name, engine in engines.items():
            for sid in sessions[name]:
                engine.close(sid)
    return out


def fluency(engine, prompt: list[int], story: list[int]) -> float:
    """Mean log p(token | everything before it) over the story's tokens, scored afresh."""
    return float(engine.score(prompt + story)[-len(story):].mean())


# ---- what a storyteller looks at -------------------------------------------------------

def one_edit_apart(a: str, b: str) -> bool:
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def names_inside_sentences(text: str) -> set[str]:
    """Capitalised words that do not open a sentence (nor a quotation opening one)."""
    out = set()
    for m in WORD.finditer(text):
        before = text[:m.start()].rstrip(' "\'')
        if m.group()[0].isupper() and before and before[-1] not in ".!?\n":
            out.add(m.group())
    return out


def measures(text: str, name: str) -> dict[str, float]:
    words = WORD.findall(text)
    lower = [w.lower() for w in words]
    bigrams = list(zip(lower, lower[1:]))
    grams4 = list(zip(lower, lower[1:], lower[2:], lower[3:]))
    counts: dict[tuple, int] = {}
    for g in grams4:
        counts[g] = counts.get(g, 0) + 1
    return {
        "distinct2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        "rep4": sum(c for c in counts.values() if c > 1) / len(grams4) if grams4 else 0.0,
        "name_kept": float(name in words),
        "drift": float(any(one_edit_apart(w, name) for w in names_inside_sentences(text))),
    }


def measure_cell(engines: dict, tok, cell: Cell, seeds: list[int], max_new: int) -> tuple[dict, list[str]]:
    eot = eot_id(tok)
    prompts = [tok.encode(text).ids for _, text in PROMPTS]
    names = [name for name, _ in PROMPTS for _ in seeds]
    prompt_of = [ids for ids in prompts for _ in seeds]
    t0 = time.perf_counter()
    stories = write_stories(engines, prompts, seeds, cell, eot, max_new)
    seconds = time.perf_counter() - t0
    rows = []
    texts = []
    for prompt, story, name in zip(prompt_of, stories, names):
        text = tok.decode([t for t in story if t != eot])
        texts.append(text)
        m = measures(text, name)
        m["fluency_gpt2"] = fluency(engines["gpt2"], prompt, story)
        m["fluency_bdh"] = fluency(engines["bdh"], prompt, story)
        m["ended"] = float(story[-1] == eot)
        m["tokens"] = float(len(story))
        rows.append(m)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    summary["fluency_both"] = (summary["fluency_gpt2"] + summary["fluency_bdh"]) / 2
    summary["stories"] = len(rows)
    summary["seconds"] = seconds
    return summary, texts


def measure_reference(engines: dict, tok, path: Path, n: int, max_new: int) -> dict:
    """The same measures on real stories (the validation set's first n, each cut after a
    16-token opening, then up to max_new tokens scored): what the data itself reads like."""
    texts = [t.strip() for t in path.read_text(encoding="utf-8").split("<|endoftext|>") if t.strip()][:n]
    rows = []
    for text in texts:
        ids = tok.encode(text).ids
        prompt, story = ids[:16], ids[16:16 + max_new]
        m = measures(tok.decode(story), name="")
        m["fluency_gpt2"] = fluency(engines["gpt2"], prompt, story)
        m["fluency_bdh"] = fluency(engines["bdh"], prompt, story)
        rows.append(m)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in ("fluency_gpt2", "fluency_bdh", "distinct2", "rep4")}
    summary["fluency_both"] = (summary["fluency_gpt2"] + summary["fluency_bdh"]) / 2
    summary["stories"] = len(rows)
    return summary


# ---- the cells -------------------------------------------------------------------------

def cells(sections: list[str]) -> list[Cell]:
    presets, default = read_presets()
    d = asdict(presets[default])
    out = []
    if "blend" in sections:
        for blend in ("linear", "geometric"):
            for w in WEIGHTS:
                if blend == "geometric" and w in (0.0, 1.0):
                    continue  # the same distribution as the linear cell
                out.append(Cell("blend", f"{blend} w={w:g}", w, blend, d["temperature"], d["top_p"], d["top_k"]))
    if "presets" in sections:
        for name, p in presets.items():
            label = name + (" (default)" if name == default else "")
            out.append(Cell("presets", label, p.logic_weight, "linear", p.temperature, p.top_p, p.top_k))
    if "sampling" in sections:
        for t, top_p, top_k in SAMPLING_GRID:
            out.append(Cell("sampling", f"T={t:g} top_p={top_p:g} top_k={top_k}", d["logic_weight"], "linear",
                            t, top_p, top_k))
    return out


COLUMNS = [("fluency_gpt2", "fl.GPT-2", "{:8.3f}"), ("fluency_bdh", "fl.BDH", "{:7.3f}"),
           ("fluency_both", "fl.both", "{:7.3f}"), ("distinct2", "dist-2", "{:6.3f}"), ("rep4", "rep-4", "{:6.3f}"),
           ("name_kept", "name kept", "{:9.0%}"), ("drift", "drift", "{:5.0%}"), ("ended", "ended", "{:5.0%}"),
           ("tokens", "tokens", "{:6.0f}")]


def header() -> str:
    return f"{'cell':28s} " + " ".join(f"{title:>{len(fmt.format(0.0))}s}" for _, title, fmt in COLUMNS)


def line(label: str, s: dict) -> str:
    return f"{label:28s} " + " ".join(fmt.format(s[key]) if key in s else f"{'-':>{len(fmt.format(0.0))}s}"
                                      for key, _, fmt in COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--seeds", type=int, default=3, help="stories per prompt (10 prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--sections", default="blend,presets,sampling")
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "data" / "tinystories" /
                    "TinyStories-valid-part.txt", help="real stories to measure alongside (skipped if absent)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--samples", action="store_true", help="print each cell's first story")
    ap.add_argument("--json", type=Path, help="also write every cell's figures here")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.max_new_tokens < 1:
        ap.error("--seeds and --max-new-tokens must be at least 1")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"blend", "presets", "sampling"}
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))} (blend, presets, sampling)")
    if args.threads:
        torch.set_num_threads(args.threads)

    ckpts = {name: load_checkpoint(args.checkpoints / name) for name in ("gpt2", "bdh")}
    if fingerprint(ckpts["gpt2"].tokenizer) != fingerprint(ckpts["bdh"].tokenizer):
        raise SystemExit("the two checkpoints' tokenizers differ: a token-by-token blend needs one vocabulary")
    tok = ckpts["gpt2"].tokenizer
    engines = {name: c.engine() for name, c in ckpts.items()}
    seeds = list(range(1, args.seeds + 1))
    print(f"{args.checkpoints}: {len(PROMPTS)} prompts × {len(seeds)} seeds = {len(PROMPTS) * len(seeds)} stories "
          f"per cell, up to {args.max_new_tokens} tokens; fluency in nats per token (higher is better)\n")

    results = []
    if args.reference.is_file():
        ref = measure_reference(engines, tok, args.reference, len(PROMPTS) * len(seeds), args.max_new_tokens)
        print(f"[reference] {ref['stories']} real stories from {args.reference.name}, after a 16-token opening")
        print(header())
        print(line("TinyStories (real)", ref), flush=True)
        results.append({"cell": {"section": "reference", "label": args.reference.name}, "figures": ref})
    section = None
    for cell in cells(sections):
        if cell.section != section:
            section = cell.section
            print(f"\n[{section}]" + ("" if section != "sampling" else f" at logic_weight {cell.logic_weight:g}, linear"))
            print(header())
        summary, texts = measure_cell(engines, tok, cell, seeds, args.max_new_tokens)
        print(line(cell.label, summary), flush=True)
        if args.samples:
            print(f"    {PROMPTS[0][1] + texts[0]!r}")
        results.append({"cell": asdict(cell), "figures": summary, "sample": texts[0]})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
