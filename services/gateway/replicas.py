"""Several gateway replicas behind one load balancer.

A story lives in the process that writes it: its sessions, its sampler and its client's
stream are there. So with `peers` set, a story's id names its replica (the replica's
`advertise_address`, hex-encoded: `gen-<random>-<owner>`), and a replica asked to steer
or report on a story it does not run forwards the request to the one named, in one hop,
and answers with what that replica says. A replica that stops ends its own stories only.

Why not a shared store: steering must reach the running loop within a token or two, and
the loop is in one process anyway; a store would add a part to run and still need a
signal to that process. Why not sticky sessions: the stream and the steering requests
are separate HTTP requests, and load balancers pin them only with cookies or hashing that
clients of an API do not carry.

An id is client input: a request is forwarded only to an address listed in `peers`, or
that its `dns:NAME:PORT` entry resolves to now (a Kubernetes headless Service), and
never again once forwarded, so an id cannot make the gateway call anything else, nor two
replicas call each other in a loop. With `peers` empty (one process) ids carry no owner
and nothing is forwarded: everything is as before.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import socket
import time

import httpx
from fastapi import Request
from fastapi.responses import Response

from .errors import error_response
from .settings import GatewaySettings

log = logging.getLogger("plotarmour.gateway")

FORWARDED = "x-plotarmour-forwarded"  # set on a forwarded request: it is never forwarded again
_DNS_TTL_S = 5.0  # a resolved dns: entry is reused this long (replicas come and go with the HPA)


def owner_part(address: str) -> str:
    return address.encode().hex()


def host_port(host: str, port: str | int) -> str:
    """host:port as a URL takes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normal(address: str) -> str:
    """An address as host_port writes it ("fd00::1:8000", as $(POD_IP):8000 gives it, → "[fd00::1]:8000")."""
    host, _, port = address.rpartition(":")
    return address if address.startswith("[") or not host else host_port(host, port)


def owner_of(gen_id: str) -> str | None:
    """The replica address a generation id names, or None (no owner part, or not one)."""
    _, _, tail = gen_id.rpartition("-")
    if not gen_id.startswith("gen-") or gen_id.count("-") != 2:
        return None
    try:
        return binascii.unhexlify(tail).decode()
    except (ValueError, UnicodeDecodeError):
        return None


class Peers:
    """The other replicas this one may forward to, and the forwarding itself."""

    def __init__(self, settings: GatewaySettings):
        self.me = normal(settings.advertise_address) if settings.advertise_address else ""
        entries = [e.strip() for e in settings.peers.split(",") if e.strip()]
        self.static = {normal(e) for e in entries if not e.startswith("dns:")}
        self.names = [e[len("dns:"):].rpartition(":") for e in entries if e.startswith("dns:")]
        self._resolved: tuple[float, set[str]] = (0.0, set())
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))

    @property
    def enabled(self) -> bool:
        return bool(self.me and (self.static or self.names))

    async def known(self, fresh: bool = False) -> set[str]:
        """Every peer address: the listed ones and what the dns: names resolve to now
        (re-resolved after _DNS_TTL_S; `fresh`: after a second, so ids naming unknown
        replicas cannot make every request a DNS lookup)."""
        if not self.names:
            return self.static
        at, found = self._resolved
        if time.monotonic() - at > (1.0 if fresh else _DNS_TTL_S):
            loop, found = asyncio.get_running_loop(), set()
            for host, _, port in self.names:
                try:
                    infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                except (OSError, ValueError) as e:
                    log.warning("peers: cannot resolve %s: %s", host, e)
                    continue
                found |= {host_port(info[4][0], port) for info in infos}
            self._resolved = (time.monotonic(), found)
        return self.static | found

    async def elsewhere(self, gen_id: str, request: Request) -> Response | None:
        """The owner's answer when the story `gen_id` runs on another replica; None when this
        replica is to answer (it owns the id, the id names no replica, or forwarding is off)."""
        owner = owner_of(gen_id) if self.enabled else None
        if owner is None or owner == self.me or request.headers.get(FORWARDED):
            return None
        if owner not in await self.known() and owner not in await self.known(fresh=True):  # a new replica?
            log.warning("not forwarding %s: %s is not among the peers", gen_id, owner)
            return None
        headers = {FORWARDED: "1", "content-type": request.headers.get("content-type", "application/json")}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        try:
            r = await self._client.request(request.method, f"http://{owner}{request.url.path}",
                                           content=await request.body(), headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            log.warning("the replica running %s (%s) cannot be reached: %r", gen_id, owner, e)
            return error_response(request, 503, f"the gateway replica running generation {gen_id!r} cannot be "
                                                "reached; a story ends with its replica")
        # The owner's answer as it gave it (status, body and its type).
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    async def aclose(self) -> None:
        await self._client.aclose()
