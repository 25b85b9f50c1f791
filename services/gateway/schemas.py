"""Request bodies. Pydantic checks types and fixed ranges (→ 422 naming the field); limits
that come from settings are checked in `limits.py`.

Every body is strict: `true` is not a weight and `"7"` is not a seed (a client that sends
them has a bug worth hearing about); an integer is still a fine float."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Blend = Literal["linear", "geometric"]


def _stop_list(v):
    if v is None:
        return []
    return [v] if isinstance(v, str) else v


class GenerateRequest(BaseModel):
    # Unknown fields are errors: a misspelt "logic_wieght" must not silently use the default.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    logic_weight: float = Field(0.5, ge=0.0, le=1.0, description="0 = pure GPT-2, 1 = pure BDH")
    blend: Blend = "linear"
    max_new_tokens: int | None = Field(None, ge=1, description="default and upper limit from settings")
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="0 = no top-k cut")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63, description="omitted: a random seed, reported back")
    stop: list[str] = Field(default_factory=list)

    _stop = field_validator("stop", mode="before")(_stop_list)


class SteerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    logic_weight: float = Field(ge=0.0, le=1.0)


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    context: str = ""
    draft: str = Field(min_length=1)
    min_excess_bits: float = Field(3.0, ge=0.0, le=64.0)


class CompletionRequest(BaseModel):
    """OpenAI's /v1/completions body, plus PlotArmour's `logic_weight`, `blend` and `top_k`."""

    # OpenAI clients send fields we do not use (user, logit_bias...): ignore those.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    echo: Literal[False] = False
    logprobs: None = None
    logic_weight: float = Field(0.5, ge=0.0, le=1.0)
    blend: Blend = "linear"
    top_k: int = Field(0, ge=0)

    _stop = field_validator("stop", mode="before")(_stop_list)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request is supported")
            v = v[0]
        if not v:
            raise ValueError("prompt must not be empty")
        return v
