"""Gateway parts that need no server: torch-freedom, stop sequences, the validator's
span finder, settings, the SSE parser and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plotarmour.cli import main as cli_main
from plotarmour.cli import parse_sse
from services.gateway.generation import StopText
from services.gateway.settings import GatewaySettings
from services.gateway.validator import ValidatorParams, find_spans

ROOT = Path(__file__).resolve().parents[2]


def test_gateway_and_cli_import_no_torch():
    code = ("import sys, services.gateway, services.gateway.__main__, plotarmour.cli;"
            "app = services.gateway.create_app(services.gateway.GatewaySettings());"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'plotarmour.models',"
            " 'plotarmour.checkpoint', 'transformers')));"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stop_text_holds_back_possible_starts_and_cuts_at_the_stop():
    s = StopText(["The end", "!!"])
    assert s.push("They played. The") == ("They played. ", False)  # "The" could start "The end"
    assert s.held == "The"
    assert s.push(" e") == ("", False)
    assert s.push("nd. Bye") == ("", True)  # the stop and all after it are dropped
    s = StopText(["The end"])
    assert s.push("Wow! The") == ("Wow! ", False)
    assert s.push("y left") == ("They left", False)  # "They" is not "The end": released
    assert s.flush() == ""
    s = StopText(["xyz"])
    assert s.push("abx") == ("ab", False) and s.flush() == "x"
    assert StopText([]).push("anything") == ("anything", False)
    # Two stops in one piece: the earliest wins.
    assert StopText(["b", "a"]).push("xab") == ("x", True)


def test_find_spans_flags_the_outlier_with_offsets_and_a_reason():
    draft = "Tom ate the moon with a spoon."
    words = ["Tom", " ate", " the", " moon", " with", " a", " spoon", "."]
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w)
    bits = np.array([5.0, 4.0, 3.0, 16.0, 4.5, 3.5, 5.0, 3.0])
    lp_bdh = -bits * np.log(2)
    lp_gpt2 = -np.full_like(bits, 4.0) * np.log(2)
    spans = find_spans(draft, offsets, lp_bdh, lp_gpt2)
    assert len(spans) == 1
    s = spans[0]
    assert (s["start"], s["end"], s["text"]) == (11, 16, " moon")
    assert "p=1.5e-05" in s["reason"] and "16.0 bits" in s["reason"] and "GPT-2 gives p=0.062" in s["reason"]
    # A uniform draft has nothing to flag; a stricter margin flags nothing either.
    assert find_spans(draft, offsets, -np.full(8, 4.0), lp_gpt2) == []
    assert find_spans(draft, offsets, lp_bdh, lp_gpt2, ValidatorParams(min_excess_bits=20)) == []


def test_find_spans_merges_adjacent_tokens():
    offsets = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    bits = np.array([2.0, 2.5, 12.0, 14.0, 2.0, 2.2])
    spans = find_spans("abcdef", offsets, -bits * np.log(2), -bits * np.log(2))
    assert [(s["start"], s["end"]) for s in spans] == [(2, 4)]
    assert "'d'" in spans[0]["reason"]  # the worst token of the span is quoted
    assert "GPT-2 also finds it unlikely" in spans[0]["reason"]


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("PLOTARMOUR_GATEWAY_BDH_ADDRESS", "bdh:7000")
    monkeypatch.setenv("PLOTARMOUR_GATEWAY_MAX_CONCURRENT", "3")
    s = GatewaySettings()
    assert s.bdh_address == "bdh:7000" and s.max_concurrent == 3 and s.gpt2_address == "127.0.0.1:50052"
    monkeypatch.setenv("PLOTARMOUR_GATEWAY_MAX_CONCURRENT", "0")
    with pytest.raises(ValueError, match="max_concurrent"):
        GatewaySettings()


def test_parse_sse():
    lines = ["event: start", 'data: {"a": 1}', "", ": comment", "data: x", "data: y", "", "event: end", "data: z"]
    assert list(parse_sse(lines)) == [("start", '{"a": 1}'), ("message", "x\ny"), ("end", "z")]


def test_cli_reports_an_unreachable_gateway(capsys):
    assert cli_main(["generate", "Once", "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the gateway at http://127.0.0.1:9" in capsys.readouterr().err


def test_gateway_main_help():
    r = subprocess.run([sys.executable, "-m", "services.gateway", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--bdh-address" in r.stdout


def test_every_gateway_setting_is_a_flag_and_flags_override_the_environment(monkeypatch):
    from plotarmour.flags import parse_settings
    from services.gateway.settings import GatewaySettings

    r = subprocess.run([sys.executable, "-m", "services.gateway", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    for name in GatewaySettings.model_fields:
        assert "--" + name.replace("_", "-") in r.stdout, name
    monkeypatch.setenv("PLOTARMOUR_GATEWAY_MAX_CONCURRENT", "3")
    assert parse_settings(GatewaySettings, []).max_concurrent == 3
    s = parse_settings(GatewaySettings, ["--max-concurrent", "16", "--step-timeout-s", "2.5"])
    assert (s.max_concurrent, s.step_timeout_s) == (16, 2.5)
    bad = subprocess.run([sys.executable, "-m", "services.gateway", "--max-concurrent", "many"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--max-concurrent" in bad.stderr and "Traceback" not in bad.stderr
