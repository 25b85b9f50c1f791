"""The BDH model server: the shared plotarmour.modelserver with its own settings.

    python -m services.bdh --checkpoint checkpoints/bdh        # or BDH_CHECKPOINT=...
    python -m services.bdh --help                              # every flag and env var
"""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from plotarmour.modelserver.settings import CheckpointDir, MetricsPort, ModelServerSettings, Port


class Settings(ModelServerSettings):
    """BDH model server over gRPC (plotarmour.v1.LanguageModel, health, reflection)."""

    model_config = SettingsConfigDict(env_prefix="BDH_", extra="forbid")

    checkpoint: CheckpointDir = Path("checkpoints/bdh")
    port: Port = 50051
    metrics_port: MetricsPort = 9101
