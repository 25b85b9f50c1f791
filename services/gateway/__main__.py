"""`python -m services.gateway`: serve the gateway with uvicorn.

Settings come from PLOTARMOUR_GATEWAY_* environment variables; the flags override them.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import GatewaySettings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
    ap.add_argument("--host", help="interface to listen on (PLOTARMOUR_GATEWAY_HOST)")
    ap.add_argument("--port", type=int, help="port, 0 for any free one (PLOTARMOUR_GATEWAY_PORT)")
    ap.add_argument("--gpt2-address", help="GPT-2 model server host:port (PLOTARMOUR_GATEWAY_GPT2_ADDRESS)")
    ap.add_argument("--bdh-address", help="BDH model server host:port (PLOTARMOUR_GATEWAY_BDH_ADDRESS)")
    ap.add_argument("--log-level", help="debug, info, warning... (PLOTARMOUR_GATEWAY_LOG_LEVEL)")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = GatewaySettings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
