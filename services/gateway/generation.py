"""The blending loop: two Decode streams, one token at a time.

Each step writes the sampled token to both servers before reading either answer, so
both compute at once and a step costs the slower of the two, not their sum. The loop
yields plain dict events (start, token..., end); the routes turn them into JSON, SSE or
OpenAI chunks. Errors are raised, never swallowed: the caller decides between an HTTP
status and an SSE `error` event.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from plotarmour import sampling
from plotarmour.tokenizer import IncrementalDetokenizer

from .backends import ModelPair


@dataclass
class GenerationParams:
    prompt_ids: list[int]
    logic_weight: float
    blend: str = "linear"
    max_new_tokens: int = 128
    sampling: sampling.SamplingParams = field(default_factory=sampling.SamplingParams)
    seed: int = 0
    stop: list[str] = field(default_factory=list)


@dataclass
class Generation:
    """A running generation; the only mutable part is the weight (live steering)."""

    id: str
    logic_weight: float
    tokens_done: int = 0


class Registry:
    """Running generations by id, so `POST /generations/{id}` can steer them."""

    def __init__(self):
        self._running: dict[str, Generation] = {}

    def start(self, logic_weight: float) -> Generation:
        gen = Generation(id="gen-" + secrets.token_hex(8), logic_weight=logic_weight)
        self._running[gen.id] = gen
        return gen

    def finish(self, gen: Generation) -> None:
        self._running.pop(gen.id, None)

    def get(self, gen_id: str) -> Generation | None:
        return self._running.get(gen_id)

    def __len__(self) -> int:
        return len(self._running)


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


async def generate(pair: ModelPair, gen: Generation, params: GenerationParams) -> AsyncIterator[dict]:
    """Yield {"type": "start"|"token"|"end", ...} events for one generation."""
    tok = pair.tokenizer
    eot, max_context = pair.eot_id, pair.max_context
    rng = sampling.make_rng(params.seed)
    t_start = time.perf_counter()
    sessions = (pair.gpt2.session(), pair.bdh.session())
    waited = 0.0  # seconds spent waiting on the model servers; the rest is the gateway's own work
    try:
        for s in sessions:  # both prefill at once
            await s.send_prompt(params.prompt_ids)
        lp_gpt2, lp_bdh = [await s.receive() for s in sessions]
        t_first = None
        yield {"type": "start", "id": gen.id, "logic_weight": gen.logic_weight, "blend": params.blend,
               "seed": params.seed, "prompt_tokens": len(params.prompt_ids)}

        detok = IncrementalDetokenizer(tok, params.prompt_ids)
        stopper = StopText(params.stop)
        text_parts: list[str] = []
        position = len(params.prompt_ids)
        finish = None
        for index in range(params.max_new_tokens):
            w = gen.logic_weight  # read once per step: a steer applies from the next token
            p = sampling.blend(lp_gpt2, lp_bdh, w, params.blend)
            token = sampling.sample(p, params.sampling, rng)
            position += 1
            t_first = t_first or time.perf_counter()
            if token == eot:
                finish, piece = "eos_token", ""
            else:
                piece, hit = stopper.push(detok.push(token))
                if hit:
                    finish = "stop_sequence"
                elif index + 1 == params.max_new_tokens or position >= max_context:
                    finish = "length"
            if finish in ("eos_token", "length"):
                # Nothing more will come: release what the detokenizer and stop check held back.
                tail, hit = stopper.push(detok.flush())
                piece += tail if hit else tail + stopper.flush()
                finish = "stop_sequence" if hit else finish
            text_parts.append(piece)
            gen.tokens_done = index + 1
            yield {"type": "token", "index": index, "id": token, "text": piece,
                   "p_blend": float(p[token]), "p_gpt2": float(np.exp(lp_gpt2[token])),
                   "p_bdh": float(np.exp(lp_bdh[token])), "logic_weight": w, "special": token == eot}
            if finish:
                break
            t_wait = time.perf_counter()
            for s in sessions:
                await s.send_token(token)
            lp_gpt2, lp_bdh = [await s.receive() for s in sessions]
            waited += time.perf_counter() - t_wait

        t_end = time.perf_counter()
        n = gen.tokens_done
        yield {
            "type": "end", "id": gen.id, "finish_reason": finish or "length", "text": "".join(text_parts),
            "usage": {"prompt_tokens": len(params.prompt_ids), "completion_tokens": n,
                      "total_tokens": len(params.prompt_ids) + n},
            "timings": {"time_to_first_token_ms": round((t_first - t_start) * 1e3, 3),
                        "total_ms": round((t_end - t_start) * 1e3, 3),
                        "tokens_per_s": round(n / (t_end - t_start), 2) if t_end > t_start else None,
                        # Per token, outside the waits for the servers: blend, sample, detokenize,
                        # and handing the event on (SSE encoding and sending included when streaming).
                        "gateway_ms_per_token": round((t_end - t_first - waited) * 1e3 / n, 4)},
        }
    finally:
        for s in sessions:
            s.close()
