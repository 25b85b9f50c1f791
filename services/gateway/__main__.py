"""`python -m services.gateway`: serve the gateway with uvicorn.

Every setting is a flag (`--max-concurrent 16`) and a PLOTARMOUR_GATEWAY_* environment
variable; flags override the environment. `--help` lists them all.
"""

from __future__ import annotations

import logging

import uvicorn

from plotarmour.flags import parse_settings

from .app import create_app
from .settings import GatewaySettings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(GatewaySettings, argv, prog="python -m services.gateway")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
