"""One typed settings object per model server, from environment variables and flags.

`role_settings(role)` gives each of the blend's roles (plotarmour.roles) its own env
prefix and defaults (`BDH_PORT`, `GPT2_CHECKPOINT`, ...). Flags (`--port 0`) override the environment,
which overrides the defaults. Nothing is read at import time: `parse_settings` builds
the object when the service starts, and tests build it directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from plotarmour.flags import parse_settings  # noqa: F401  (re-exported: the servers' entry point)
from plotarmour.roles import Role


# Fields a role gives its own default keep their checks and help through these types.
CheckpointDir = Annotated[Path, Field(description="checkpoint directory (config.json, model.safetensors, "
                                                  "tokenizer.json)")]
Port = Annotated[int, Field(ge=0, le=65535, description="gRPC port; 0 picks a free one")]
MetricsPort = Annotated[int, Field(ge=-1, le=65535,
                                   description="Prometheus HTTP port; 0 picks a free one, -1 turns metrics off")]


class ModelServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PLOTARMOUR_", extra="forbid")

    checkpoint: CheckpointDir
    name: str | None = Field(None, description="name reported by GetInfo (default: the checkpoint directory name)")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 inside a container)")
    port: Port = 0
    port_file: Path | None = Field(
        None, description='write {"port": ..., "metrics_port": ..., "pid": ...} here once bound')
    metrics_port: MetricsPort = -1
    device: str = Field("auto", description="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    max_sessions: int = Field(64, ge=1, description="sessions open at once (Decode streams and Batch-stream "
                                                   "sessions together); beyond: RESOURCE_EXHAUSTED")
    max_context: int | None = Field(None, ge=1, description="tokens per session, prompt included (default: "
                                                            "the model's limit, capped at default_max_context)")
    # BDH's state has no length limit, so a cap is a serving choice: it bounds what one
    # request may cost, and the bytes a request may carry (server.grpc_options).
    default_max_context: int = Field(8192, ge=1, description="cap on the model's own context limit when "
                                                              "max_context is not given (BDH has none)")
    max_batch_size: int = Field(64, ge=1, description="decode rows stepped in one forward pass")
    prefill_chunk: int = Field(256, ge=1, description="most prompt or Score tokens run per scheduler iteration; "
                                                      "beside running stories a chunk is cut to cost about 1.25 "
                                                      "decode steps")
    max_scores: int = Field(16, ge=1, description="Score calls waiting or running at once; beyond: "
                                                  "RESOURCE_EXHAUSTED (steps are never refused)")
    idle_timeout_s: float = Field(300.0, ge=0, description="free a session nobody has stepped for this long "
                                                           "(0: never)")
    first_message_timeout_s: float = Field(10.0, ge=0, description="close a Decode or Batch stream that sends "
                                                                   "nothing for this long after it opens (0: never)")
    batch_wait_ms: float = Field(
        0.0, ge=0, description="when fewer sessions wait for a step than are open, wait up to this long "
                               "for the others to join the batch (for per-session Decode clients)")
    grace_period: float = Field(10.0, ge=0, description="seconds open sessions get to finish after SIGTERM")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="logging level")


def role_settings(role: Role) -> type[ModelServerSettings]:
    """The settings of the model server in `role`: its env prefix, port and checkpoint."""

    class Settings(ModelServerSettings):
        model_config = SettingsConfigDict(env_prefix=role.env_prefix, extra="forbid")

        checkpoint: CheckpointDir = Path("checkpoints") / role.name
        port: Port = role.port
        metrics_port: MetricsPort = role.metrics_port

    Settings.__doc__ = (f"{role.family} model server, the blend's {role.label} role, over gRPC "
                        "(plotarmour.v1.LanguageModel, health, reflection).")
    Settings.__qualname__ = Settings.__name__ = f"{role.name.upper()}Settings"
    return Settings

