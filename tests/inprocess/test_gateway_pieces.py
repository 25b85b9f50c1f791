"""Gateway parts that need no server: torch-freedom, stop sequences, settings, the SSE
parser and the CLI. (The validator's arithmetic: test_validator.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plotarmour.cli import main as cli_main
from plotarmour.cli import parse_sse
from services.gateway.events import StopText
from services.gateway.settings import GatewaySettings

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


def test_unless_disconnected_cancels_the_work_only_when_the_client_left():
    import asyncio

    from services.gateway.errors import ClientGone
    from services.gateway.runs import unless_disconnected

    class Request:
        def __init__(self):
            self.gone = asyncio.Event()

        async def receive(self):
            await self.gone.wait()
            return {"type": "http.disconnect"}

    async def main():
        # The client leaves: the work is cancelled and the caller hears ClientGone.
        req, work = Request(), asyncio.Event()
        waiting = asyncio.ensure_future(unless_disconnected(req, work.wait()))
        await asyncio.sleep(0.01)
        req.gone.set()
        with pytest.raises(ClientGone):
            await waiting
        # The caller's own deadline: a timeout, not ClientGone, and the work is cancelled too.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(unless_disconnected(Request(), asyncio.sleep(60)), 0.05)
        # Work that finishes answers as it is.
        assert await unless_disconnected(Request(), asyncio.sleep(0, result=7)) == 7

    asyncio.run(main())


def test_a_run_of_several_stories_closes_every_stream_its_pumps_are_reading():
    """With n > 1 the events of several stories are pumped by tasks; a client that leaves
    without the body being closed must still have every story ended by aclose."""
    import asyncio

    from services.gateway.metrics import GatewayMetrics
    from services.gateway.runs import Limiter, Run

    async def main():
        closed = []

        async def story(i):
            try:
                yield {"type": "token", "index": 0}
                await asyncio.sleep(60)  # a story still being written
            finally:
                closed.append(i)

        limiter = Limiter(1, GatewayMetrics())
        run = Run([{}, {}], [story(0), story(1)], limiter.acquire())
        events = run.events()
        await anext(events)  # the pumps are running; the body is then left open, not closed
        await run.aclose()
        assert sorted(closed) == [0, 1] and limiter.active == 0

    asyncio.run(main())


def test_probes_stay_out_of_the_access_log():
    import logging

    from services.gateway.__main__ import QuietProbes

    def access(method, path, status=200):
        return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                 ("127.0.0.1:5", method, path, "1.1", status), None)

    quiet = QuietProbes()
    assert not quiet.filter(access("GET", "/ready", 503))
    assert not quiet.filter(access("GET", "/metrics?x=1"))
    assert not quiet.filter(access("HEAD", "/health"))
    assert quiet.filter(access("GET", "/info"))
    assert quiet.filter(access("POST", "/ready"))  # not a probe: a 405 worth seeing
    assert quiet.filter(logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "plain", None, None))


def test_a_step_whose_task_never_ran_leaves_no_unread_failure():
    # BatchStream.step queues its message at once and returns the answer's coroutine. When
    # the gateway stops, a flight task can be cancelled before that coroutine ever ran; the
    # step's future then gets the stream's failure with nobody awaiting it, and asyncio
    # would log "Future exception was never retrieved" for every such step.
    import asyncio
    import gc

    from harness import free_port
    from services.gateway.backends import BatchStream, ModelBackend
    from services.gateway.errors import ModelUnavailable

    async def main() -> list[str]:
        logged: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: logged.append(ctx["message"]))
        backend = ModelBackend("gpt2", f"127.0.0.1:{free_port('127.0.0.1')}", GatewaySettings())  # nothing listens there
        stream = BatchStream(backend)
        task = asyncio.ensure_future(stream.step([1], [5]))
        task.cancel()  # before its first turn
        await asyncio.gather(task, return_exceptions=True)
        stream.retire(ModelUnavailable("the stream failed", "gpt2"))
        del task
        gc.collect()
        await backend.channel.close()
        await asyncio.sleep(0)
        return logged

    logged = asyncio.run(main())
    assert not [m for m in logged if "never retrieved" in m], logged
