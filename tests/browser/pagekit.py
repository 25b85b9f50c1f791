"""Helpers the page's e2e tests share: filling the form, reading the story back, holding a
story mid-stream, checking that a control can be reached, and running axe-core."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

import harness

PROMPT = "Once upon a time, Lily found"
WAIT_MS = 20_000  # upper bound for page waits; they return as soon as the condition holds


@contextlib.contextmanager
def frozen(server):
    """The server's process stopped for the duration (always resumed, whatever happens)."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def story_text(page, pane: str = "#pane-blend") -> str:
    """What the models wrote in a pane (the prompt and the markers left out)."""
    return page.eval_on_selector_all(f"{pane} .tok", "els => els.map(e => e.textContent).join('')")


def open_settings(page) -> None:
    page.evaluate("document.getElementById('settings').open = true")


# The sampling fill_settings puts in the form (plain sampling, not the page's default
# preset): a seed found through the API for the page must be drawn with these.
PLAIN = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def fill_settings(page, *, prompt=PROMPT, max_tokens=120, seed=None, temperature="1", split=True, weight=None):
    page.fill("#prompt", "")
    page.locator("#prompt").press_sequentially(prompt)  # typed, key by key
    open_settings(page)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", temperature)
    page.fill("#top-k", "0")
    page.fill("#top-p", "1")
    page.fill("#seed", "" if seed is None else str(seed))
    page.set_checked("#split", split)
    if weight is not None:
        set_weight(page, weight)


def set_weight(page, percent: int) -> None:
    page.fill("#weight", str(percent))
    page.dispatch_event("#weight", "input")
    page.dispatch_event("#weight", "change")


def wait_done(page, *panes: str) -> None:
    for pane in panes or ("#pane-blend",):
        page.wait_for_selector(f"{pane}[data-state='done']", timeout=WAIT_MS)


def api_generate(gateway, **req) -> dict:
    r = httpx.post(gateway.url + "/generate", json=req, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def long_story_seed(gateway, logic_weight: float, n: int, skip: int = 0) -> int:
    """A seed whose story at this weight runs all n tokens (the fine-tuned models usually end
    a story within ~50), so a test has time to act while it streams."""
    return harness.long_story_seed(gateway.url, n, skip, prompt=PROMPT, logic_weight=logic_weight, **PLAIN)


def hold_mid_story(page, gateway, model_servers, seed_for):
    """Start a generation and freeze GPT-2 while it is surely still running.

    Returns (generation id, the frozen() context, entered). If the story happened to finish
    between its first token and the freeze, it retries with the next long seed."""
    for attempt in range(4):
        open_settings(page)
        page.fill("#seed", str(seed_for(attempt)))
        page.click("#generate")
        page.wait_for_selector("#story .tok", timeout=WAIT_MS)
        freeze = frozen(model_servers["gpt2"])
        freeze.__enter__()
        gen_id = page.get_attribute("#story", "data-generation-id")
        # Still registered twice over, with no token done in between: waiting on frozen GPT-2.
        first = httpx.get(f"{gateway.url}/generations/{gen_id}", timeout=5)
        time.sleep(0.05)
        second = httpx.get(f"{gateway.url}/generations/{gen_id}", timeout=5)
        if first.status_code == second.status_code == 200 and first.json()["tokens_done"] == second.json()["tokens_done"]:
            return gen_id, freeze
        freeze.__exit__(None, None, None)
        page.wait_for_selector("#pane-blend[data-state='done']", timeout=WAIT_MS)
        for pane in ("#pane-gpt2", "#pane-bdh"):
            if page.is_visible(pane):
                page.wait_for_selector(f"{pane}:not([data-state='streaming']):not([data-state='waiting'])",
                                       timeout=WAIT_MS)
    pytest.fail("every story finished before it could be held")


def reachable(page, selector: str) -> bool:
    """The element is inside the window and is what a click at its centre would hit."""
    return page.eval_on_selector(selector, """el => {
        const r = el.getBoundingClientRect();
        if (r.width === 0 || r.top < 0 || r.left < 0 || r.bottom > innerHeight || r.right > innerWidth) return false;
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return hit === el || el.contains(hit);
    }""")


def run_axe(page, axe_script: Path) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(path=str(axe_script))
    violations = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' + n.failureSummary)}));
    }""")
    return [v for v in violations if v["impact"] in ("serious", "critical")]
