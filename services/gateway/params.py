"""One story to write, from a route's schema to the scheduler.

A route fills what its request says (`prompt`, the weight, the sampling, ...);
`Gateway.prepare` (service.py) checks it against the settings and fills the rest: the
prompt's token ids, and `max_new_tokens` and `seed` where the request left them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plotarmour.sampling import SamplingParams


@dataclass
class GenerationParams:
    prompt: str = ""
    logic_weight: float = 0.5
    blend: str = "linear"
    max_new_tokens: int | None = None  # None: the settings' default
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None  # None: a random one, reported in the start event
    stop: list[str] = field(default_factory=list)
    top_alternatives: int = 0  # each token event lists the k likeliest tokens of the blend and of each model
    truncate: int | None = None  # keep only the prompt's last `truncate` tokens (TGI)
    steering: list[tuple[int, float]] = field(default_factory=list)  # (from token, weight), increasing
    prompt_ids: list[int] = field(default_factory=list)  # the prompt as the servers' tokenizer reads it
