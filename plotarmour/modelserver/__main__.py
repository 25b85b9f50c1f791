"""A model server in one of the blend's roles (plotarmour/roles.py):

    python -m plotarmour.modelserver --role bdh [flags]    # the same as python -m services.bdh [flags]
    PLOTARMOUR_ROLE=gpt2 python -m plotarmour.modelserver  # the role from the environment, as the image sets it
"""

import os
import sys

from plotarmour.roles import ROLES

from .server import main
from .settings import role_settings


def split_role(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--role NAME` or `--role=NAME` out of argv (else $PLOTARMOUR_ROLE), and the rest."""
    role, rest, args = os.environ.get("PLOTARMOUR_ROLE"), [], iter(argv)
    for arg in args:
        if arg == "--role":
            role = next(args, None)
        elif arg.startswith("--role="):
            role = arg.removeprefix("--role=")
        else:
            rest.append(arg)
    return role, rest


if __name__ == "__main__":
    role, argv = split_role(sys.argv[1:])
    if role not in ROLES:
        sys.exit(f"python -m plotarmour.modelserver: name a role with --role {' or --role '.join(ROLES)} "
                 f"(or PLOTARMOUR_ROLE); got {role!r}")
    sys.exit(main(role_settings(ROLES[role]), argv, prog=f"python -m plotarmour.modelserver --role {role}"))
