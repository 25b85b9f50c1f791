"""How well does /validate tell a consistent draft from a contradictory one?

Runs the 72 hand-written triples of bench/validator_triples.jsonl through the real stack
(both model servers and the gateway, on loopback ports, CPU), then rescores the answers
under every variant of bench/validator_variants.py: the per-word score, the flag rule
and the slot-substitution term, each tuned on the even lines and reported on the odd ones
too; then the shipped rule as the gateway answered, a sensitivity sweep and a breakdown by
kind. The other variants' Score answers come from the validation service itself
(services/gateway/validation.py). What it found, and why the shipped rule is what it is:
bench/VALIDATOR.md.

    python bench/bench_validator.py [--checkpoints checkpoints] [--triples bench/validator_triples.jsonl]

Takes under a minute on two CPU cores (half of it starting the servers). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.validator_variants import (  # noqa: E402
    DEFAULT_DISPLACEMENT,
    DEFAULT_VARIANT,
    DISPLACEMENTS,
    PREVIOUS_BAR_BITS,
    SUBSTITUTIONS,
    VARIANTS,
    WEIGHTS,
    WORD_WEIGHTS,
    Displacement,
    Substitution,
    Variant,
    displacement_of,
    flag_words,
    measures_of,
    score_words,
    substitution_of,
)
from plotarmour.stack import Stack, parse_args as stack_args  # noqa: E402
from services.gateway.backends import ModelPair  # noqa: E402
from services.gateway.settings import GatewaySettings  # noqa: E402
from services.gateway.validation import DraftScores, score_draft  # noqa: E402
from services.gateway.validator import (  # noqa: E402
    DEFAULT_SENSITIVITY,
    DEFAULT_THRESHOLD_BITS,
    EXPECT_TOP_K,
    Word,
    flags_at,
    group_words,
    threshold_bits,
)

FALSE_ALARM_TARGET = 0.20


@dataclass
class Draft:
    kind: str
    words: list[dict]
    flagged_by_gateway: bool
    score: float  # the answer's draft score

    def flagged_at(self, bar: float) -> bool:
        """Whether the shipped flag rule flags a word at this bar (from the answer's words)."""
        return bool(flags_at([w["displaced_bits"] for w in self.words], bar,
                             [w["punctuation"] for w in self.words]).any())


def load_triples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_drafts(url: str, triples: list[dict]) -> list[tuple[Draft, Draft]]:
    out = []
    with httpx.Client(base_url=url, timeout=120) as c:
        for t in triples:
            pair = []
            for which in ("consistent", "contradictory"):
                r = c.post("/validate", json={"context": t["context"], "draft": t[which],
                                              "sensitivity": DEFAULT_SENSITIVITY})
                r.raise_for_status()
                body = r.json()
                pair.append(Draft(t["kind"], body["words"], not body["consistent"], body["score"]))
            out.append(tuple(pair))
    return out


@dataclass
class Scored:
    """One draft's Score answers as the validation service took them, and its words."""

    s: DraftScores
    words: list[Word] = field(init=False)

    def __post_init__(self):
        self.words = group_words(self.s.draft, self.s.offsets)

    def displaced(self, v: Displacement) -> np.ndarray:
        """Per-word displaced bits under v (the models' weighted sum)."""
        s = self.s
        return displacement_of(self.words, s.token_ids, s.with_context, s.without_context, s.expected,
                               s.expected_without, s.context_ids, v)[0]

    def substituted(self, v: Substitution) -> np.ndarray:
        """Per-word substitution bits under v."""
        s = self.s
        return substitution_of(self.words, s.token_ids, s.with_context, s.without_context, s.expected,
                               s.expected_without, s.context_ids, s.decode, v)

    @property
    def punctuation(self) -> list[bool]:
        return [w.punctuation for w in self.words]

    def flagged(self, v: Displacement, bar: float, displaced: np.ndarray | None = None) -> bool:
        """Whether displaced expectations under v flag a word at this bar (the shipped rule's test)."""
        return bool(flags_at(self.displaced(v) if displaced is None else displaced, bar, self.punctuation).any())


async def score_triples(stack: Stack, triples: list[dict]) -> list[tuple[Scored, Scored]]:
    """Per triple and draft: both models' Scores with and without the context (top-64),
    asked of the stack's model servers by the validation service, as /validate asks."""
    port = {m: json.loads((stack.tmp / f"{m}.json").read_text())["port"] for m in ("gpt2", "bdh")}
    host = stack.args.host
    pair = ModelPair(GatewaySettings(gpt2_address=f"{host}:{port['gpt2']}", bdh_address=f"{host}:{port['bdh']}",
                                     step_timeout_s=120))
    try:
        return [tuple([Scored(await score_draft(pair, t["context"], t[which]))
                       for which in ("consistent", "contradictory")]) for t in triples]
    finally:
        await pair.aclose()


def or_bar(sub_good: list[np.ndarray], shipped_good: list[bool]) -> float:
    """The lowest substitution bar whose flags, OR the shipped flags, keep the tuning half's
    false alarms within target (inf: none does)."""
    for c in sorted({float(x) for g in sub_good for x in g if x > 0}):
        fa = np.mean([s or bool((g >= c).any()) for g, s in zip(sub_good, shipped_good)])
        if fa <= FALSE_ALARM_TARGET:
            return c
    return float("inf")


def displacement_rates(raw, v: Displacement, bar: float) -> tuple[float, float, float]:
    """(pairwise by the draft's worst word, detection, false alarms): a word is flagged at
    displaced ≥ bar (and > 0)."""
    pw = det = fa = 0
    for good, bad in raw:
        g, b = good.displaced(v), bad.displaced(v)
        pw += b.max(initial=0) > g.max(initial=0)
        det += bad.flagged(v, bar, b)
        fa += good.flagged(v, bar, g)
    n = max(len(raw), 1)
    return pw / n, det / n, fa / n


def displacement_bar(raw, v: Displacement) -> float:
    worst = np.sort([good.displaced(v).max(initial=0) for good, _ in raw])[::-1]
    bar = worst[int(np.floor(FALSE_ALARM_TARGET * len(raw)))]
    return float(np.nextafter(max(bar, 0.0), np.inf))


def scored(d: Draft, v: Variant) -> tuple[float, np.ndarray, np.ndarray]:
    """(draft score, word scores, combined context bits; punctuation's context bits are
    +inf, so that it never counts as lowered) under variant v."""
    s, ctx = score_words(measures_of(d.words), v)
    ctx = np.where([w["punctuation"] for w in d.words], np.inf, ctx)
    return (float(s.mean()) if s.size else 0.0), s, ctx


def rates(pairs, v: Variant, threshold: float) -> tuple[float, float, float]:
    """(pairwise, detection, false alarms) over `pairs`."""
    pw = det = fa = 0
    for good, bad in pairs:
        sg, wg, cg = scored(good, v)
        sb, wb, cb = scored(bad, v)
        pw += sb > sg
        det += bool(flag_words(wb, cb, threshold).any())
        fa += bool(flag_words(wg, cg, threshold).any())
    n = max(len(pairs), 1)
    return pw / n, det / n, fa / n


def calibrate(pairs, v: Variant) -> float:
    """The lowest bar (most detection) whose false-alarm rate on `pairs` is within target."""
    # A consistent draft raises an alarm iff its worst gated word reaches the bar.
    worst = []
    for good, _ in pairs:
        _, w, ctx = scored(good, v)
        gated = w[ctx < 0]
        worst.append(gated.max() if gated.size else -np.inf)
    worst = np.sort(worst)[::-1]
    allowed = int(np.floor(FALSE_ALARM_TARGET * len(pairs)))  # alarms we may raise
    # Just above the (allowed+1)-th highest: that many alarms at most.
    bar = worst[allowed] if allowed < len(worst) else -np.inf
    return float(np.nextafter(bar, np.inf)) if np.isfinite(bar) else -10.0


def shipped_rates(pairs, bar: float | None = None) -> tuple[float, float, float]:
    """(pairwise by the answer's draft score, detection, false alarms) of the gateway's own
    answers: its flags as sent (bar None) or the shipped rule recomputed at `bar`."""
    pw = det = fa = 0
    for good, bad in pairs:
        pw += bad.score > good.score
        det += bad.flagged_by_gateway if bar is None else bad.flagged_at(bar)
        fa += good.flagged_by_gateway if bar is None else good.flagged_at(bar)
    n = max(len(pairs), 1)
    return pw / n, det / n, fa / n


def at_the_change(good: Draft, bad: Draft) -> bool:
    """Whether a flag on the contradictory draft is on a word that the consistent draft
    does not have (the change itself), not on a word both drafts share."""
    mine = {w["text"] for w in good.words}
    return any(w["flagged"] and w["text"] not in mine for w in bad.words)


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--triples", type=Path, default=ROOT / "bench" / "validator_triples.jsonl")
    args = ap.parse_args(argv)

    triples = load_triples(args.triples)
    kinds = sorted({t["kind"] for t in triples}, key=[t["kind"] for t in triples].index)
    print(f"{len(triples)} triples, {len(kinds)} kinds: " + ", ".join(
        f"{k} {sum(t['kind'] == k for t in triples)}" for k in kinds))

    stack = Stack(stack_args(["--port", "0", "--checkpoints", str(args.checkpoints), "--device", "cpu"]))
    t0 = time.perf_counter()
    try:
        url = stack.start()
        t1 = time.perf_counter()
        pairs = run_drafts(url, triples)
        t2 = time.perf_counter()
        raw = asyncio.run(score_triples(stack, triples))
    finally:
        stack.stop()
    print(f"stack up in {t1 - t0:.1f} s; {2 * len(pairs)} validations in {t2 - t1:.1f} s "
          f"({1e3 * (t2 - t1) / (2 * len(pairs)):.0f} ms each)\n")

    tune, held = pairs[0::2], pairs[1::2]
    print("Each variant's threshold is calibrated on the tuning half (false alarms ≤ "
          f"{FALSE_ALARM_TARGET:.0%} there).\n")
    head = f"{'variant':28s} {'bar':>6s} | {'tuning half':^23s} | {'held-out half':^23s} | {'all':^23s}"
    sub = f"{'':28s} {'bits':>6s} | " + " | ".join(["  pair   det    f.a. "] * 3)
    print(head)
    print(sub)
    print("-" * len(head))
    results = []
    for v in VARIANTS:
        bar = calibrate(tune, v)
        r = [rates(part, v, bar) for part in (tune, held, pairs)]
        results.append((v, bar, r))
        print(f"{v.name:28s} {bar:6.2f} | " + " | ".join(" ".join(pct(x) for x in part) for part in r))

    print(f"\ndisplaced expectations (top-{EXPECT_TOP_K} from the model servers' Score, with and "
          "without the context; pairwise: the draft's worst word):")
    for v in DISPLACEMENTS:
        bar = displacement_bar(raw[0::2], v)
        r = [displacement_rates(part, v, bar) for part in (raw[0::2], raw[1::2], raw)]
        print(f"{v.name:28s} {bar:6.2f} | " + " | ".join(" ".join(pct(x) for x in part) for part in r))

    halves = (slice(0, None, 2), slice(1, None, 2), slice(None))
    base = [(scored(g, DEFAULT_VARIANT)[0], scored(b, DEFAULT_VARIANT)[0]) for g, b in pairs]
    ship_g = [g.flagged(DEFAULT_DISPLACEMENT, DEFAULT_THRESHOLD_BITS) for g, _ in raw]
    ship_b = [b.flagged(DEFAULT_DISPLACEMENT, DEFAULT_THRESHOLD_BITS) for _, b in raw]
    print(f"\nslot substitutions (a context word among the no-context top-{EXPECT_TOP_K} at the "
          "draft word, boosted by the context; f.w. = function words):\n"
          "  as a flag rule alone (pairwise: the draft's worst word) | OR the shipped flags "
          "(det, f.a.: tuning, held-out, all) | draft score = shipped mean + weight × max, or\n"
          "  the shipped mean of (word score + weight × its substitution) (pairwise: tuning, held-out, all)")
    for v in SUBSTITUTIONS:
        sg = [g.substituted(v) for g, _ in raw]
        sb = [b.substituted(v) for _, b in raw]
        worst = np.sort([g.max(initial=0) for g in sg[0::2]])[::-1]
        bar = float(np.nextafter(max(worst[int(np.floor(FALSE_ALARM_TARGET * len(worst)))], 0.0), np.inf))
        alone = [(np.mean([b.max(initial=0) > g.max(initial=0) for g, b in zip(sg[h], sb[h])]),
                  np.mean([bool(((b >= bar) & (b > 0)).any()) for b in sb[h]]),
                  np.mean([bool(((g >= bar) & (g > 0)).any()) for g in sg[h]])) for h in halves]
        ob = or_bar(sg[0::2], ship_g[0::2])
        orr = [(np.mean([s or bool(((b >= ob) & (b > 0)).any()) for s, b in zip(ship_b[h], sb[h])]),
                np.mean([s or bool(((g >= ob) & (g > 0)).any()) for s, g in zip(ship_g[h], sg[h])])) for h in halves]

        def acc(w, h):
            return np.mean([bs + w * b.max(initial=0) > gs + w * g.max(initial=0)
                            for (gs, bs), g, b in zip(base[h], sg[h], sb[h])])

        def acc_mean(w, h):
            return np.mean([bs + w * b.mean() > gs + w * g.mean()
                            for (gs, bs), g, b in zip(base[h], sg[h], sb[h])])
        w = max(WEIGHTS, key=lambda x: (acc(x, halves[0]), -x))
        wm = max(WORD_WEIGHTS, key=lambda x: (acc_mean(x, halves[0]), -x))
        print(f"{v.name:32s} {bar:5.2f} | " + " | ".join(" ".join(pct(x) for x in part) for part in alone)
              + f"\n{'':32s} OR {ob:5.2f}: " + " | ".join(" ".join(pct(x) for x in part) for part in orr)
              + f"   score + w·max, w={w:.2f}: " + " ".join(pct(acc(w, h)) for h in halves)
              + f"   per word, w={wm:.1f}: " + " ".join(pct(acc_mean(wm, h)) for h in halves))

    best = max(results, key=lambda x: (x[2][0][0], x[2][0][1]))
    print(f"\nbest draft score on the tuning half: {best[0].name!r} (pairwise {pct(best[2][0][0])})")
    v = DEFAULT_VARIANT
    previous = [rates(part, v, PREVIOUS_BAR_BITS) for part in (tune, held, pairs)]
    print(f"{'previous rule (score ≥ bar)':28s} {PREVIOUS_BAR_BITS:6.2f} | "
          + " | ".join(" ".join(pct(x) for x in part) for part in previous))
    print(f"shipped: draft score {v.name!r}; flags {DEFAULT_DISPLACEMENT.name!r} at sensitivity "
          f"{DEFAULT_SENSITIVITY} = a bar of {DEFAULT_THRESHOLD_BITS:.2f} bits (the gateway's own answers)")
    shipped = [shipped_rates(part) for part in (tune, held, pairs)]
    print(f"{'shipped, default sensitivity':28s} {DEFAULT_THRESHOLD_BITS:6.2f} | "
          + " | ".join(" ".join(pct(x) for x in part) for part in shipped))
    # The gateway's displaced bits against the bench's own from the raw Score answers.
    gap = max(abs(w["displaced_bits"] - x) for pair, rpair in zip(pairs, raw) for d, r in zip(pair, rpair)
              for w, x in zip(d.words, r.displaced(DEFAULT_DISPLACEMENT)))
    agree = np.mean([d.flagged_by_gateway == d.flagged_at(DEFAULT_THRESHOLD_BITS) for pair in pairs for d in pair])
    print(f"(the gateway's displaced bits match the bench's own to {gap:.1e} bits; its flags agree "
          f"with the rule recomputed from its words on {pct(agree)} of drafts)")
    print("targets: pairwise ≥ 80%, detection ≥ 65%, false alarms ≤ 20%")
    on_word = [at_the_change(good, bad) for good, bad in pairs]
    print(f"detections whose flag covers a word the consistent draft does not have: "
          f"{sum(on_word)} of {sum(bad.flagged_by_gateway for _, bad in pairs)} "
          f"({pct(sum(on_word) / len(pairs))} of the contradictory drafts)")

    print(f"\nsensitivity sweep, {DEFAULT_DISPLACEMENT.name!r} (higher flags more):")
    print(f"{'sensitivity':>11s} {'bar':>6s} | {'tuning half':^17s} | {'held-out half':^17s} | {'all':^17s}")
    print(f"{'':>11s} {'bits':>6s} | " + " | ".join(["  det    f.a.   "] * 3))
    for s in np.round(np.linspace(0, 1, 11), 2):
        bar = threshold_bits(float(s))
        r = [shipped_rates(part, bar)[1:] for part in (tune, held, pairs)]
        print(f"{s:11.2f} {bar:6.2f} | " + " | ".join(" ".join(pct(x) for x in part) for part in r))

    print("\nby kind, shipped at the default sensitivity (all triples):")
    print(f"{'kind':10s} {'n':>3s}  {'pair':>6s} {'det':>6s} {'f.a.':>6s}")
    for k in kinds:
        sub_pairs = [p for p in pairs if p[0].kind == k]
        pw, det, fa = shipped_rates(sub_pairs)
        print(f"{k:10s} {len(sub_pairs):3d}  {pct(pw)} {pct(det)} {pct(fa)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
