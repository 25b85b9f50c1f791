"""Command-line flags generated from a settings class, so a service's flags, environment
variables and defaults are one list (its pydantic fields) and can never drift apart.

    settings = parse_settings(GatewaySettings, argv, prog="python -m services.gateway")
"""

from __future__ import annotations

import argparse
import sys
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def parse_settings(settings_cls: type[S], argv: list[str] | None = None, prog: str | None = None) -> S:
    """Flags named after the fields (`--max-sessions 8`) on top of the environment.

    A bad value exits with status 2 and a message naming the flag and its env var.
    """
    prefix = settings_cls.model_config.get("env_prefix", "")
    ap = argparse.ArgumentParser(
        prog=prog, description=(settings_cls.__doc__ or "").strip(),
        epilog=f"Every flag can also be set as an environment variable: {prefix}<NAME>, e.g. {prefix}PORT.")
    for name, field in settings_cls.model_fields.items():
        default = "required" if field.is_required() else field.default
        ap.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                        help=f"{field.description} [env {prefix}{name.upper()}; default {default}]")
    given = vars(ap.parse_args(argv))
    try:
        return settings_cls(**given)
    except ValidationError as e:
        problems = "; ".join(
            f"--{str(err['loc'][0]).replace('_', '-')} (env {prefix}{str(err['loc'][0]).upper()}): {err['msg']}"
            if err["loc"] else err["msg"]
            for err in e.errors())
        ap.print_usage(sys.stderr)
        print(f"{ap.prog}: error: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
