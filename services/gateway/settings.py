"""The gateway's one settings object, read from PLOTARMOUR_GATEWAY_* environment variables.

Built once in `__main__` (or by a test) and passed to `create_app`; nothing reads the
environment at import time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from plotarmour.roles import ROLES


class GatewaySettings(BaseSettings):
    """The gateway: blends the GPT-2 and BDH model servers and serves the stories over HTTP."""

    model_config = SettingsConfigDict(env_prefix="PLOTARMOUR_GATEWAY_", extra="ignore")

    # Where the two model servers listen (host:port, as grpc expects).
    gpt2_address: str = Field(f"127.0.0.1:{ROLES['gpt2'].port}",
                              description=f"the creativity role's model server (host:port or a gRPC target such "
                                          f"as dns:///gpt2:{ROLES['gpt2'].port})")
    bdh_address: str = Field(f"127.0.0.1:{ROLES['bdh'].port}",
                             description="the logic role's model server (host:port or a gRPC target)")

    # round_robin spreads sessions over every address a name resolves to: with a
    # headless Kubernetes Service and a dns:/// address, over all model-server replicas.
    lb_policy: Literal["pick_first", "round_robin"] = Field(
        "pick_first", description="gRPC load balancing over a target's addresses: pick_first or round_robin")

    streams_per_server: int = Field(
        1, ge=1, le=64, description="Batch streams kept to each model-server address; with round_robin and N "
                                    "replicas behind one address, set N so every replica gets a stream")

    step_rows: Literal["float16", "float32"] = Field(
        "float16", description="the type the model servers send each step's log-probs in: float16 halves the "
                               "bytes of every step (each log-prob within 1/2048 of itself); float32 is exact")

    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 to serve other machines)")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one")

    # A model server that does not answer within this bound makes the request fail
    # with 503 (or an SSE error event), never hang.
    connect_timeout_s: float = Field(5.0, gt=0, description="GetInfo and health checks of the model servers")
    step_timeout_s: float = Field(10.0, gt=0, description="one decoding step, one prompt's prefill or one Score call")
    retry_interval_s: float = Field(
        1.0, gt=0, description="background reconnect to servers not yet ready, and the longest gRPC waits "
                               "between tries to reach one")
    recover_timeout_s: float = Field(
        30.0, ge=0, description="a story whose model server goes away mid-way waits this long for it (or another "
                                "replica) to come back, reopens its session from the story's tokens and goes on, "
                                "the same story; 0: it ends with an error at once")

    max_concurrent: int = Field(16, ge=1, description="requests generating or validating at once (the page's split "
                                                      "view takes 3); beyond: 429 with Retry-After")
    max_new_tokens_limit: int = Field(1024, ge=1, description="largest max_new_tokens a request may ask for")
    default_max_new_tokens: int = Field(128, ge=1, description="max_new_tokens when a request leaves it out")
    max_prompt_chars: int = Field(40_000, ge=1, description="longest prompt, in characters")
    max_prompt_tokens: int = Field(8192, ge=1, description="longest prompt, in tokens (each model reads its last "
                                                           "window of it; with context_shift 0, capped by the models)")
    context_shift: float = Field(
        0.5, ge=0.0, lt=1.0, description="when a story fills a model's context, that model's session reopens on "
                                         "the story's last part, this fraction of its context, and the story goes "
                                         "on; 0: the story ends with finish_reason length")
    max_stop_sequences: int = Field(8, ge=0, description="most stop sequences in one request")
    max_choices: int = Field(16, ge=1, description="most stories one request may ask for (OpenAI's prompts × n); "
                                                    "they run together under one of max_concurrent's places")

    # Several replicas behind one load balancer (services/gateway/replicas.py).
    peers: str = Field("", description="the gateway replicas' host:port, comma-separated, or dns:NAME:PORT (every "
                                       "address NAME resolves to); steering and status of a story another replica "
                                       "runs are forwarded to it. Empty: one process, nothing forwarded")
    advertise_address: str = Field("", description="host:port where the other replicas reach this one (with "
                                                   "peers: each story's id names it)")

    # Name reported as the model by /v1/completions.
    model_name: str = Field("plotarmour", description="model name that /v1/models, /v1 answers and TGI's "
                                                      "/info report")
    log_level: str = Field("info", description="debug, info, warning or error")

    # Guards (services/gateway/security.py). A body is refused with 413 before it is parsed.
    max_body_bytes: int = Field(1_048_576, ge=1, description="largest request body in bytes; larger gets 413")
    cors_origins: str = Field("", description="comma-separated origins browsers may call the API from "
                                              "(e.g. https://app.example.com); empty: no cross-origin access")
    api_key: SecretStr | None = Field(None, description="when set, every route except /health, /ready, / and "
                                                        "/static needs 'Authorization: Bearer <key>' (else 401)")

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
