"""The BDH model server: the shared plotarmour.modelserver in the "bdh" role.

    python -m services.bdh --checkpoint checkpoints/bdh   # or BDH_CHECKPOINT=...
    python -m services.bdh --help   # every flag and env var
"""

from plotarmour.modelserver.settings import role_settings
from plotarmour.roles import ROLES

Settings = role_settings(ROLES["bdh"])
