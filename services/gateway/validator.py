"""The logic validator: which parts of a draft does the logic model (BDH) find improbable?

"Improbable" is relative to the draft itself: a token is flagged when its BDH surprisal
stands out from the draft's typical token by both a robust z-score (median and MAD, so
one wild token does not hide another) and an absolute margin in bits. Absolute
thresholds alone would flag everything under an untrained model and nothing under a
good one. Adjacent flagged tokens merge into one span. Pure numpy: testable without servers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LOG2 = np.log(2.0)


@dataclass(frozen=True)
class ValidatorParams:
    min_excess_bits: float = 3.0  # at least 8x less probable than the draft's median token
    min_z: float = 2.5            # robust z-score over the draft's BDH surprisals


def surprisal_bits(logprobs: np.ndarray) -> np.ndarray:
    return -np.asarray(logprobs, dtype=np.float64) / _LOG2


def find_spans(
    draft: str,
    offsets: list[tuple[int, int]],
    lp_bdh: np.ndarray,
    lp_gpt2: np.ndarray,
    params: ValidatorParams = ValidatorParams(),
) -> list[dict]:
    """Improbable spans as character offsets into `draft`, each with a reason.

    offsets[i] is the character range of draft token i; lp_* are the log-probs of the
    draft tokens (natural log), one per token.
    """
    s_bdh, s_gpt2 = surprisal_bits(lp_bdh), surprisal_bits(lp_gpt2)
    if s_bdh.size == 0:
        return []
    median = float(np.median(s_bdh))
    mad = float(np.median(np.abs(s_bdh - median))) * 1.4826  # ≈ std for a normal distribution
    scale = max(mad, 0.5)  # a draft of near-identical surprisals must not make every bump "extreme"
    flagged = (s_bdh - median >= params.min_excess_bits) & ((s_bdh - median) / scale >= params.min_z)

    spans, i = [], 0
    while i < flagged.size:
        if not flagged[i]:
            i += 1
            continue
        j = i
        while j + 1 < flagged.size and flagged[j + 1]:
            j += 1
        worst = i + int(np.argmax(s_bdh[i: j + 1]))
        start, end = offsets[i][0], offsets[j][1]
        p_b, p_g = 2.0 ** -s_bdh[worst], 2.0 ** -s_gpt2[worst]
        agrees = "GPT-2 also finds it unlikely" if s_gpt2[worst] - float(np.median(s_gpt2)) >= params.min_excess_bits \
            else "GPT-2 finds it ordinary"
        spans.append({
            "start": start, "end": end, "text": draft[start:end],
            "reason": (f"BDH gives {draft[offsets[worst][0]:offsets[worst][1]]!r} p={p_b:.2g} "
                       f"({s_bdh[worst]:.1f} bits), {s_bdh[worst] - median:.1f} bits above the draft's median "
                       f"of {median:.1f} bits; GPT-2 gives p={p_g:.2g} ({s_gpt2[worst]:.1f} bits): {agrees}"),
            "p_bdh": p_b, "p_gpt2": p_g,
        })
        i = j + 1
    return spans
