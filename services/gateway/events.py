"""Token events: what a story's client receives, built from what the scheduler drew.

`token_event` and `end_event` build the plain dicts (start, token..., end) that the
routes turn into JSON, SSE or OpenAI chunks; `StopText` holds back text that could begin a
stop sequence; `TokenTexts` names the alternatives a token event lists.
"""

from __future__ import annotations

import time

import numpy as np


class StopText:
    """Releases streamed text, holding back a tail that could be the start of a stop sequence.

    Text already released never contains the beginning of a stop sequence, so a match
    can only start inside what is held plus the new piece.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop sequence was hit)."""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self.held = text[len(text) - keep:]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


def top_k(row: np.ndarray, k: int, log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k likeliest tokens of one distribution, likeliest first → (ids, probabilities);
    `log`: the row holds log-probabilities."""
    k = min(k, row.size)
    ids = np.argpartition(row, -k)[-k:]
    ids = ids[np.argsort(-row[ids], kind="stable")]
    vals = row[ids].astype(np.float64)
    return ids, np.exp(vals) if log else vals


class TokenTexts:
    """Token ids with their text for the alternatives a token event lists, each decoded on
    its own (so a piece of a multi-byte character shows as U+FFFD), cached per tokenizer."""

    def __init__(self):
        self._texts: dict[int, str] = {}
        self._of: str | None = None  # the tokenizer fingerprint the cache belongs to

    def named(self, tokenizer, fingerprint: str, ids: np.ndarray, probs: np.ndarray) -> list[dict]:
        if self._of != fingerprint:
            self._texts, self._of = {}, fingerprint
        out = []
        for i, p in zip(ids.tolist(), probs.tolist()):
            if i not in self._texts:
                self._texts[i] = tokenizer.decode([i], skip_special_tokens=False)
            out.append({"id": i, "text": self._texts[i], "p": p})
        return out

    def alternatives(self, tokenizer, fingerprint: str, top_blend, lps: list[np.ndarray | None], k: int) -> dict:
        """The blend's k likeliest tokens (already drawn up: `top_blend`) and each model's."""
        return {"blend": self.named(tokenizer, fingerprint, *top_blend), **{
            name: self.named(tokenizer, fingerprint, *top_k(lp, k, log=True)) if lp is not None else []
            for name, lp in (("gpt2", lps[0]), ("bdh", lps[1]))}}


def token_event(index: int, token: int, text: str, p_blend: float, lps: list[np.ndarray | None], weight: float,
                special: bool, shifted: list[str], alternatives: dict | None) -> dict:
    # Each model's probability of the token, or None for a model the weight did not ask.
    p_each = [None if lp is None else float(np.exp(lp[token])) for lp in lps]
    event = {"type": "token", "index": index, "id": token, "text": text, "p_blend": float(p_blend),
             "p_gpt2": p_each[0], "p_bdh": p_each[1], "logic_weight": weight, "special": special}
    if shifted:  # this token was drawn after a model's window slid
        event["context_shift"] = list(shifted)
    if alternatives is not None:
        event["alternatives"] = alternatives
    return event


def end_event(gen_id: str, finish: str, text: str, prompt_tokens: int, completion_tokens: int,
              t_start: float, t_first: float, waited: float) -> dict:
    t_end, n = time.perf_counter(), completion_tokens
    return {
        "type": "end", "id": gen_id, "finish_reason": finish, "text": text,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n},
        "timings": {"time_to_first_token_ms": round((t_first - t_start) * 1e3, 3),
                    "total_ms": round((t_end - t_start) * 1e3, 3),
                    "tokens_per_s": round(n / (t_end - t_start), 2) if t_end > t_start else None,
                    # Per token, outside the waits for the servers: blending and sampling
                    # (for the whole batch), detokenizing, and the other stories' turns.
                    # Telling the tokens comes after the steps are sent: it overlaps a wait.
                    "gateway_ms_per_token": round((t_end - t_first - waited) * 1e3 / n, 4)},
    }
