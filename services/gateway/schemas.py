"""Request bodies of every surface. Pydantic checks types and fixed ranges (→ 422 naming
the field); limits that come from settings are checked in `service.py`.

Every body is strict: `true` is not a weight and `"7"` is not a seed (a client that sends
them has a bug worth hearing about); an integer is still a fine float. NaN and the
infinities are never numbers here, and 1e999 (an infinity once parsed) neither.

The OpenAI and TGI bodies accept the fields their clients send, and refuse, with 422, every
option that would change the output and that PlotArmour does not implement (at any value
but its do-nothing one), and every field they do not know: silence would hand the client
output it did not ask for. Fields that cannot change the output (`user`, `metadata`, ...)
are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from plotarmour.sampling import BLENDS

from .presets import DEFAULT as PAGE_DEFAULT

Blend = Literal[tuple(BLENDS)]  # one registry: plotarmour.sampling.BLENDS

_STRICT = dict(strict=True, allow_inf_nan=False)


def _text(v: str) -> str:
    # JSON may escape a lone surrogate ("\ud800"); no tokenizer or response can hold one.
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"holds a lone surrogate (character {e.start}), which is not text") from None
    return v


Text = Annotated[str, AfterValidator(_text)]  # every string a client sends


def _stop_list(v):
    if v is None:
        return []
    return [v] if isinstance(v, str) else v


def unsupported(*fields: str, allowed: tuple = (None,)):
    """A validator giving 422, named by the field, for an option that PlotArmour does not
    implement, unless it holds a do-nothing value (None, 0, an empty list...)."""

    def check(v, info):
        if v not in allowed and v not in ((), [], {}, ""):
            raise ValueError(f"{info.field_name} is not supported by PlotArmour; leave it out")
        return v

    return field_validator(*fields)(check)


MAX_STEERING_POINTS = 64


class SteeringPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", **_STRICT)

    at: int = Field(ge=0, description="the generated token (0-based) from which this weight applies")
    logic_weight: float = Field(ge=0.0, le=1.0)


def _increasing(points: list[SteeringPoint]) -> list[SteeringPoint]:
    for i, (a, b) in enumerate(zip(points, points[1:]), start=1):
        if b.at <= a.at:
            raise ValueError(f"steering[{i}].at is {b.at}, not after steering[{i - 1}].at = {a.at}; "
                             f"points must be in increasing order of `at`")
    return points


class GenerateRequest(BaseModel):
    # Unknown fields are errors: a misspelt "logic_wieght" must not silently use the default.
    model_config = ConfigDict(extra="forbid", **_STRICT)

    prompt: Text = Field(min_length=1)
    logic_weight: float = Field(PAGE_DEFAULT.logic_weight, ge=0.0, le=1.0, description="0 = pure GPT-2, 1 = pure BDH")
    blend: Blend = "linear"
    max_new_tokens: int | None = Field(None, ge=1, description="default and upper limit from settings")
    # Weight and sampling defaults: the page's default preset (services/gateway/static/js/presets.js),
    # chosen with bench/bench_stories.py; 1 / 0 / 1 switch temperature, top-k and top-p off.
    temperature: float = Field(PAGE_DEFAULT.temperature, ge=0.0, le=100.0, description="0 = greedy")
    top_k: int = Field(PAGE_DEFAULT.top_k, ge=0, description="0 = no top-k cut")
    top_p: float = Field(PAGE_DEFAULT.top_p, gt=0.0, le=1.0, description="1 = no nucleus cut")
    seed: int | None = Field(None, ge=0, lt=2**63, description="omitted: a random seed, reported back")
    stop: list[Text] = Field(default_factory=list)
    top_alternatives: int = Field(0, ge=0, le=20, description="each token event lists the k likeliest tokens "
                                                              "of the blend and of each model")
    steering: Annotated[list[SteeringPoint], AfterValidator(_increasing)] = Field(
        default_factory=list, max_length=MAX_STEERING_POINTS,
        description="a weight schedule: from token `at` on, draw at `logic_weight` (a steered story, replayed "
                    "with its seed, is written again token for token); live steering takes over from it")

    _stop = field_validator("stop", mode="before")(_stop_list)


class SteerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", **_STRICT)

    logic_weight: float = Field(ge=0.0, le=1.0)


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", **_STRICT)

    context: Text = Field("", description="the story so far; empty: the draft is checked against nothing")
    draft: Text = Field(min_length=1, description="the text to check against the context")
    sensitivity: float = Field(0.5, ge=0.0, le=1.0, description=(
        "how readily words are flagged: higher flags more. 0.5, the default, is the setting "
        "bench/bench_validator.py chose; each 0.1 lowers the bar by 0.3 bits"))


# ---- OpenAI ---------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", **_STRICT)

    include_usage: bool = False


def _null_means(default):
    """OpenAI accepts null for most fields, meaning the default."""
    return lambda v: default if v is None else v


class OpenAIBase(BaseModel):
    """What /v1/completions and /v1/chat/completions share, plus PlotArmour's own
    `logic_weight`, `blend` and `top_k` (the openai client sends them via `extra_body`)."""

    model_config = ConfigDict(extra="forbid", **_STRICT)

    # Accepted and ignored: they cannot change the output.
    user: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    parallel_tool_calls: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None

    model: Text | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: list[Text] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[Text, float] | None = None
    logic_weight: float = Field(0.5, ge=0.0, le=1.0)
    blend: Blend = "linear"
    top_k: int = Field(0, ge=0)

    _stop = field_validator("stop", mode="before")(_stop_list)
    _n = field_validator("n", mode="before")(_null_means(1))
    _penalties = unsupported("presence_penalty", "frequency_penalty", allowed=(None, 0))
    _bias = unsupported("logit_bias")


class CompletionRequest(OpenAIBase):
    """OpenAI's /v1/completions body. A list of prompts gives `n` choices for each, in
    order (choice `i·n + j` is the j-th of prompt i), as OpenAI does."""

    prompt: Text | list[Text]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1)
    suffix: Text | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        prompts = [v] if isinstance(v, str) else v
        if not prompts:
            raise ValueError("at least one prompt is needed")
        if not all(prompts):
            raise ValueError("a prompt must not be empty")
        return v

    _suffix = unsupported("suffix")
    _echo = field_validator("echo", mode="before")(_null_means(False))

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v, info):
        if v is not None and v != info.data.get("n", 1):  # best_of = n draws n: nothing to choose
            raise ValueError("best_of other than n is not supported by PlotArmour; leave it out")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_echo_logprobs(cls, v, info):
        if v is not None and info.data.get("echo"):
            raise ValueError("logprobs with echo is not supported (the prompt's own log-probabilities are not "
                             "computed); ask for one of them")
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", **_STRICT)

    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", **_STRICT)

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(OpenAIBase):
    """OpenAI's /v1/chat/completions body; see `chat_prompt` for how messages become a story."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list | None = None
    tool_choice: Any = None
    functions: list | None = None
    function_call: Any = None
    response_format: dict | None = None

    _logprobs = field_validator("logprobs", mode="before")(_null_means(False))
    _tools = unsupported("tools", "functions")
    _tool_choice = unsupported("tool_choice", "function_call", allowed=(None, "none"))

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v):
        if v and v.get("type", "text") != "text":
            raise ValueError("only the 'text' response_format is supported by PlotArmour")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v, info):
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    @field_validator("messages")
    @classmethod
    def _some_text(cls, v):
        if not any(m.text.strip() for m in v):
            raise ValueError("the messages hold no text to continue")
        return v


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The story prompt a conversation stands for.

    These are base story models: they never saw a chat format, and role markers would only
    confuse them. So the messages' texts, in order, joined by blank lines, are the story so
    far, and the reply continues it: a system message sets the scene, a user message adds
    to the story, an earlier assistant message is a part already written."""
    return "\n\n".join(m.text.strip() for m in messages if m.text.strip())


# ---- TGI ------------------------------------------------------------------------------
class TGIParameters(BaseModel):
    """TGI's `parameters`: what its clients send (unset values arrive as null), plus
    PlotArmour's `logic_weight` and `blend`."""

    model_config = ConfigDict(extra="forbid", **_STRICT)

    max_new_tokens: int | None = Field(None, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(None, gt=0.0, le=100.0)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0.0, lt=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: list[Text] = Field(default_factory=list)
    details: bool = False
    return_full_text: bool | None = False
    top_n_tokens: int | None = Field(None, ge=0, le=20)
    truncate: int | None = Field(None, ge=1)
    decoder_input_details: bool = False
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    typical_p: float | None = None
    best_of: int | None = None
    watermark: bool = False
    grammar: Any = None
    adapter_id: Text | None = None
    logic_weight: float = Field(0.5, ge=0.0, le=1.0)
    blend: Blend = "linear"

    _stop = field_validator("stop", mode="before")(_stop_list)
    _neutral_one = unsupported("repetition_penalty", "typical_p", "best_of", allowed=(None, 1))
    _neutral_zero = unsupported("frequency_penalty", allowed=(None, 0))
    _off = unsupported("watermark", "decoder_input_details", allowed=(False,))
    _none = unsupported("grammar", "adapter_id")

    @property
    def sampling(self) -> bool:
        # As TGI: greedy unless sampling is asked for, or a sampling knob is set.
        return self.do_sample or any(v is not None for v in (self.temperature, self.top_k, self.top_p))


class TGIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", **_STRICT)

    inputs: Text = Field(min_length=1)
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False
