"""The BDH model server: the shared plotarmour.modelserver with its own settings.

    python -m services.bdh --checkpoint checkpoints/bdh        # or BDH_CHECKPOINT=...
    python -m services.bdh --help                              # every flag and env var
"""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from plotarmour.modelserver.settings import CheckpointDir, MetricsPort, ModelServerSettings, Port


class Settings(ModelServerSettings):
    """BDH model server over gRPC (plotarmour.v1.LanguageModel, health, reflection)."""

    model_config = SettingsConfigDict(env_prefix="BDH_", extra="forbid")

    checkpoint: CheckpointDir = Path("checkpoints/bdh")
    port: Port = 50051
    metrics_port: MetricsPort = 9101
    # BDH's state has no length limit, so its cap is a serving choice: it bounds what one
    # request may cost.
    default_max_context: int = Field(8192, ge=1, description="context cap when max_context is not given (BDH's "
                                                             "state has no length limit; this bounds one request)")
