"""Health probe for containers and scripts: exit 0 when the model server is SERVING.

    python -m plotarmour.modelserver.probe 127.0.0.1:50051 [--timeout 2]
    python -m plotarmour.modelserver.probe    # in an image: its role's port ($PLOTARMOUR_ROLE)
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plotarmour.roles import ROLES

SERVICE_NAME = "plotarmour.v1.LanguageModel"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plotarmour.modelserver.probe", description=__doc__)
    ap.add_argument("address", nargs="?", help="host:port of a model server [127.0.0.1 at the port of the "
                                               "role $PLOTARMOUR_ROLE names: its <ROLE>_PORT, else its default]")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    args = ap.parse_args(argv)
    if args.address is None:
        role = ROLES.get(os.environ.get("PLOTARMOUR_ROLE", ""))
        if role is None:
            ap.error("give the server's address, or set PLOTARMOUR_ROLE to " + " or ".join(ROLES))
        args.address = f"127.0.0.1:{os.environ.get(role.env_prefix + 'PORT', role.port)}"
    try:
        with grpc.insecure_channel(args.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=args.timeout).status
    except grpc.RpcError as e:
        print(f"{args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.address}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
