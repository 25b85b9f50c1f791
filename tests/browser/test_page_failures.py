"""The page against fake model servers (tests/fake_servers.py) where a real one cannot be made
to misbehave on cue: a model that fails mid-story, and models with a small context, so a
short story already slides their windows. The gateway is the real one."""

from __future__ import annotations

import pytest
from pagekit import PROMPT, WAIT_MS, fill_settings, story_text, wait_done

NOT_RUNNING = "[...document.querySelectorAll('.pane')].every(p => !['streaming', 'waiting'].includes(p.dataset.state))"


def blend_requests(page) -> list[dict]:
    """The page's /generate_stream bodies that were for the blend (not the side panes)."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.method == "POST" and "/generate_stream" in r.url and r.post_data_json["logic_weight"] not in (0, 1)
            else None)
    return bodies


def test_one_failure_gives_one_plain_message_with_retry_and_continue(open_page, fake_gateway):
    # BDH fails at its 6th step: every story on it (the blend and both side panes) breaks at once.
    gw = fake_gateway(bdh={"fail_at_step": 6})
    page = open_page(gw.url + "/")
    page.wait_for_selector("#readiness.pill-ok", timeout=WAIT_MS)
    readiness_checks: list[str] = []
    page.on("request", lambda r: readiness_checks.append(r.url) if r.url.endswith("/ready") else None)
    sent = blend_requests(page)
    fill_settings(page, seed=4, max_tokens=40, split=True)
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    page.wait_for_function(NOT_RUNNING, timeout=WAIT_MS)

    # One message, in plain words naming the model; the server's own text stays in the
    # gateway's log, never on the page (under "Details" only the status).
    message = page.text_content("#error-message")
    assert message and "fake failure" not in message and "The logic model (BDH)" in message
    shown = page.inner_text("body")
    assert shown.count(message) == 1 and "fake failure" not in shown
    assert "fake failure" not in page.text_content("#error-detail") and "503" in page.text_content("#error-detail")
    metas = page.eval_on_selector_all(".pane-meta", "els => els.map(e => e.textContent)")
    assert all(len(m) < 60 for m in metas), metas  # the panes only say that they stopped
    # The readiness badge was asked at once (it polls only every 10 s otherwise).
    assert readiness_checks, "no readiness check after the failure"
    page.wait_for_selector("#readiness.pill-ok")  # (the fake still answers its health checks)

    # Retry sends the same story again; it fails the same way, still with one message.
    assert page.is_visible("#retry") and page.is_visible("#error-continue")
    written = story_text(page)
    assert written
    page.click("#retry")
    page.wait_for_function(f"document.querySelectorAll('.pane').length && {NOT_RUNNING} && "
                           "!document.querySelector('#error').hidden", timeout=WAIT_MS)
    page.wait_for_selector("#generate:not([disabled])")
    assert len(sent) == 2 and sent[1] == sent[0]
    assert page.inner_text("body").count(page.text_content("#error-message")) == 1

    # Continue goes on from what was written: the prompt plus the story so far.
    so_far = story_text(page)
    page.click("#error-continue")
    page.wait_for_function(f"{NOT_RUNNING} && !document.querySelector('#generate').disabled", timeout=WAIT_MS)
    assert len(sent) == 3 and sent[2]["prompt"] == PROMPT + so_far and sent[2]["seed"] == 5
    assert story_text(page).startswith(so_far)


def test_a_long_story_marks_where_a_models_window_slid(open_page, fake_gateway):
    # Tiny contexts: a 60-token story (the fakes never end one) fills both models' windows,
    # which slide on.
    gw = fake_gateway(gpt2={"max_context": 32, "never_end": True}, bdh={"max_context": 48, "never_end": True})
    page = open_page(gw.url + "/")
    fill_settings(page, seed=1, max_tokens=60, split=False)
    page.click("#generate")
    wait_done(page)
    assert "60 word pieces" in page.text_content("#pane-blend .pane-meta")  # the story went on past the windows
    marks = page.eval_on_selector_all("#story .shift-mark", "els => els.map(e => [e.dataset.roles, e.getAttribute('aria-label')])")
    assert marks and {"gpt2", "bdh"} <= {r for roles, _ in marks for r in roles.split()}
    assert all("forgot the start" in label for _, label in marks)
    # The word after a slide says so in its details. (With seed 1, GPT-2's first slide comes at
    # a token whose bytes the detokenizer holds, so the word shown after the mark is the next
    # token's: it tells of the slide too.)
    page.evaluate("""() => {
        let el = document.querySelector('#story .shift-mark');
        while (el && !el.classList.contains('tok')) el = el.nextElementSibling;
        el.click();
    }""")
    page.wait_for_selector("#inspector-shift:not([hidden])")
    assert "forget the start" in page.text_content("#inspector-shift")
