"""The gRPC model server both services share (docs/ARCHITECTURE.md §6).

    settings.py  ModelServerSettings: env vars + flags → one typed object
    scheduler.py owns the decode engine: one loop, each iteration every waiting decode
                 row as one batch plus one chunk of prefill or Score, on one worker thread
                 (a lone story's short step on the loop itself)
    work.py      what it is asked and answers: sessions, a step call's rows, prefill and
                 Score work, a Score's answer
    servicer.py  the LanguageModel RPCs (Decode, Batch, Score, GetInfo), thin: protocol
                 checks and status codes
    errors.py    the failures the servicer turns into status codes
    server.py    create_server() (binds, port 0 for tests) / serve() (signals, logging)
    metrics.py   Prometheus metrics on their own HTTP port
    launch.py    start a server as a subprocess and wait for it (tests, benchmarks)
    probe.py     the health probe containers run: exit 0 when the server is SERVING

Torch is imported only when a model loads, so importing this package (e.g. for
`launch`) stays cheap; the names below load lazily.
"""

from __future__ import annotations

_LAZY = {
    "ModelServerSettings": "settings",
    "parse_settings": "settings",
    "ModelServer": "server",
    "create_server": "server",
    "serve": "server",
    "main": "server",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
