"""Polling helpers for tests that watch real servers settle (no fixed sleeps)."""

from __future__ import annotations

import time

import grpc

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc


def wait_until(cond, timeout: float = 10.0) -> bool:
    """Poll cond() until it is true (→ True) or timeout seconds pass (→ False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def open_sessions(server) -> int:
    """Sessions a model server has open now (Batch and Decode), as its GetInfo reports."""
    with grpc.insecure_channel(server.address) as ch:
        return pb_grpc.LanguageModelStub(ch).GetInfo(pb.InfoRequest(), timeout=5).open_sessions
