"""Model-server settings: flags over env vars over the service's defaults; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.bdh import Settings as BDHSettings
from services.gpt2 import Settings as GPT2Settings
from plotarmour.modelserver.settings import parse_settings


def test_each_service_has_its_own_defaults_and_prefix(monkeypatch):
    monkeypatch.setenv("GPT2_PORT", "6000")
    bdh, gpt2 = parse_settings(BDHSettings, []), parse_settings(GPT2Settings, [])
    assert (bdh.checkpoint, bdh.port, bdh.metrics_port) == (Path("checkpoints/bdh"), 50051, 9101)
    assert (gpt2.checkpoint, gpt2.port, gpt2.metrics_port) == (Path("checkpoints/gpt2"), 6000, 9102)
    assert (bdh.host, bdh.device, bdh.dtype) == ("127.0.0.1", "auto", "float32")


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("BDH_PORT", "7000")
    monkeypatch.setenv("BDH_MAX_SESSIONS", "3")
    monkeypatch.setenv("BDH_THREADS", "2")
    s = parse_settings(BDHSettings, ["--port", "0", "--max-context", "128", "--checkpoint", "/ckpt/x",
                                     "--port-file", "/tmp/p.json"])
    assert (s.port, s.max_sessions, s.threads, s.max_context) == (0, 3, 2, 128)
    assert (s.checkpoint, s.port_file) == (Path("/ckpt/x"), Path("/tmp/p.json"))


@pytest.mark.parametrize("env, argv, named", [
    ({"BDH_MAX_SESSIONS": "0"}, [], "--max-sessions (env BDH_MAX_SESSIONS)"),
    ({}, ["--port", "70000"], "--port (env BDH_PORT)"),
    ({}, ["--dtype", "float64"], "--dtype (env BDH_DTYPE)"),
    ({}, ["--threads", "many"], "--threads (env BDH_THREADS)"),
])
def test_bad_values_exit_2_naming_the_flag_and_variable(monkeypatch, capsys, env, argv, named):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        parse_settings(BDHSettings, argv)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err
