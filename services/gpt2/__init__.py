"""The GPT-2 model server: the shared plotarmour.modelserver in the "gpt2" role.

    python -m services.gpt2 --checkpoint checkpoints/gpt2   # or GPT2_CHECKPOINT=...
    python -m services.gpt2 --help   # every flag and env var
"""

from plotarmour.modelserver.settings import role_settings
from plotarmour.roles import ROLES

Settings = role_settings(ROLES["gpt2"])
