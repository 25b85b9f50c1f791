"""The GPT-2 model server: the shared plotarmour.modelserver with its own settings.

    python -m services.gpt2 --checkpoint checkpoints/gpt2        # or GPT2_CHECKPOINT=...
    python -m services.gpt2 --help                              # every flag and env var
"""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from plotarmour.modelserver.settings import CheckpointDir, MetricsPort, ModelServerSettings, Port


class Settings(ModelServerSettings):
    """GPT-2 model server over gRPC (plotarmour.v1.LanguageModel, health, reflection)."""

    model_config = SettingsConfigDict(env_prefix="GPT2_", extra="forbid")

    checkpoint: CheckpointDir = Path("checkpoints/gpt2")
    port: Port = 50052
    metrics_port: MetricsPort = 9102
