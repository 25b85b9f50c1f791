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


PROBES = ("/health", "/ready", "/metrics")


class QuietProbes(logging.Filter):
    """Leaves probes out of the access log below debug level: the page asks /ready every
    10 s, start-up polls it until the models load, and Prometheus and Kubernetes poll too;
    readiness changes are logged by the gateway itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args  # uvicorn's access record: (client, method, path, http version, status)
        if isinstance(args, tuple) and len(args) == 5 and args[1] in ("GET", "HEAD"):
            return str(args[2]).split("?", 1)[0] not in PROBES
        return True


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(GatewaySettings, argv, prog="python -m services.gateway")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level.lower() not in ("debug", "trace"):
        logging.getLogger("uvicorn.access").addFilter(QuietProbes())
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
