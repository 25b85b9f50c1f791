"""The story page in headless Chromium against the real gateway and both real model servers:
streaming equals the API with the prompt heading each story, the tint (which model drove
each choice), the token inspector, Stop frees the servers' sessions, steering that the page
reports truly, stalls, errors, Continue, the output buttons, the layout at laptop and phone
sizes, screenshots and an axe-core run.

Where a test must catch a story mid-stream it freezes the GPT-2 server (SIGSTOP): the gateway
then waits for that server's next distribution, so the generation surely stays open until the
test lets it go (SIGCONT) — no sleeps and no timing assumptions.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
from pathlib import Path

import httpx
import pytest
from pagekit import (PROMPT, WAIT_MS, api_generate, fill_settings, frozen, hold_mid_story, long_story_seed,
                     open_settings, reachable, run_axe, set_weight, story_text, wait_done)
from harness import open_sessions, wait_until

ALL_PANES = ("#pane-blend", "#pane-gpt2", "#pane-bdh")
CLEAR_LEAD = 3  # the page colours a word one model gave at least 3x the other's probability


def record_streaming(page) -> None:
    """Log (tokens shown, aria-busy) each time the blend pane's text changes."""
    page.evaluate("""() => {
        window.__snapshots = [];
        const story = document.querySelector('#story');
        new MutationObserver(() => window.__snapshots.push(
            [story.querySelectorAll('.tok').length, story.getAttribute('aria-busy')]
        )).observe(story, {childList: true, attributes: true});
    }""")


def record_requests(page, path: str) -> list[dict]:
    """The JSON bodies of the page's POSTs to URLs containing path, as they are sent."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.method == "POST" and path in r.url else None)
    return bodies


def visible(text: str) -> str:
    """The page's visible() for a token's text (format.js)."""
    if text == "":
        return "(nothing)"
    if text.strip() == "":
        return "(line break)" if "\n" in text else "(tab)" if "\t" in text else "(space)"
    return re.sub(r"\s*\n\s*", " / ", text.strip())


def js_round(x: float) -> int:
    """JavaScript's Math.round (halves up), not Python's round (halves to even)."""
    return math.floor(x + 0.5)


def share(w: float, p_bdh: float, p_gpt2: float) -> float:
    b, g = w * p_bdh, (1 - w) * p_gpt2
    return b / (b + g) if b + g > 0 else 0.5


# ---- the story --------------------------------------------------------------------------------


def test_story_streams_in_under_its_prompt_tinted_by_the_model_that_drove_it(page, gateway):
    # The empty state says what to do, and is still there once the scripts have run.
    assert "Generate" in page.text_content("#story .placeholder")
    assert page.is_visible("#story .placeholder")
    fill_settings(page, seed=11, max_tokens=120)
    # The slider by keyboard: End, then 30 steps left = 70%.
    page.focus("#weight")
    page.keyboard.press("End")
    for _ in range(30):
        page.keyboard.press("ArrowLeft")
    assert page.input_value("#weight") == "70"
    assert page.text_content("#weight-pct") == "70%"
    assert "70% Logic (BDH), 30% Creativity (GPT-2)" == page.get_attribute("#weight", "aria-valuetext")
    assert page.text_content("label[for=weight]").strip() and "Hemisphere" not in page.content()

    record_streaming(page)
    page.focus("#prompt")
    page.keyboard.press("Enter")  # Enter in the prompt generates (on a keyboard device)
    wait_done(page, *ALL_PANES)

    req = {"prompt": PROMPT, "seed": 11, "max_new_tokens": 120, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
           "blend": "linear"}
    blended = api_generate(gateway, **req, logic_weight=0.7)
    assert story_text(page) == blended["text"] and blended["text"]
    # The same prompt and seed written by each model alone, beside the blend.
    assert story_text(page, "#pane-gpt2") == api_generate(gateway, **req, logic_weight=0.0)["text"]
    assert story_text(page, "#pane-bdh") == api_generate(gateway, **req, logic_weight=1.0)["text"]

    # It streamed: the page showed part of the story while the generation was still busy.
    snapshots = page.evaluate("window.__snapshots")
    n = len(page.query_selector_all("#story .tok"))
    assert any(0 < count < n and busy == "true" for count, busy in snapshots), snapshots

    # The prompt heads each story, untinted, in the same neutral colour everywhere.
    heads = page.eval_on_selector_all(".prompt-head", """els => els.map(e => ({
        text: e.textContent, color: getComputedStyle(e).color, bg: getComputedStyle(e).backgroundColor,
        first: e.parentElement.firstElementChild === e}))""")
    assert len(heads) == 3 and all(h["text"] == PROMPT and h["first"] for h in heads)
    assert len({h["color"] for h in heads}) == 1 and {h["bg"] for h in heads} == {"rgba(0, 0, 0, 0)"}

    # The share (inspector) is BDH's part of the blended probability, 0.7·p_bdh against
    # 0.3·p_gpt2; the tint is which model liked the word at least 3x as much (weight left out).
    toks = page.eval_on_selector_all("#story .tok", """els => els.map(e => ({
        cls: e.className, bdh: Number(e.dataset.pBdh), gpt2: Number(e.dataset.pGpt2), weight: e.dataset.weight,
        share: Number(e.dataset.share), bg: getComputedStyle(e.querySelector('.ink')).backgroundColor}))""")
    api_toks = [t for t in blended["tokens"] if t["text"]]
    assert len(toks) == len(api_toks)
    for shown, t in zip(toks, api_toks):
        # Loose: a server batching the three streams together rounds a little differently.
        assert shown["bdh"] == pytest.approx(t["p_bdh"], rel=1e-3) and shown["gpt2"] == pytest.approx(t["p_gpt2"], rel=1e-3)
        s = share(0.7, t["p_bdh"], t["p_gpt2"])
        assert shown["share"] == pytest.approx(s, abs=1e-3)
        lean, clear = math.log(t["p_bdh"] / t["p_gpt2"]), math.log(CLEAR_LEAD)
        side = ("by-bdh" if lean > clear + 0.01 else "by-gpt2" if lean < -clear - 0.01
                else "by-both" if abs(lean) < clear - 0.01 else None)
        if side:  # (at the edge of the band either is right)
            assert side in shown["cls"].split(), (shown, t)
            assert (shown["bg"] == "rgba(0, 0, 0, 0)") == (side == "by-both"), shown
        assert shown["weight"] == "70"
    assert {"by-bdh", "by-gpt2"} & {c for t in toks for c in t["cls"].split()}  # some token was driven
    # No tint in the pure panes: one model drove every word there.
    pure = page.eval_on_selector_all("#pane-gpt2 .tok, #pane-bdh .tok", """els => els.map(e => [e.className,
        getComputedStyle(e.querySelector('.ink')).backgroundColor])""")
    assert pure and all(c == "tok by-none" and bg == "rgba(0, 0, 0, 0)" for c, bg in pure)

    assert page.get_attribute("#story", "aria-busy") == "false"
    assert not page.query_selector_all("#story .steer-mark")  # the slider did not move mid-story
    assert page.text_content("#blend-badge") == "70% logic"
    assert page.is_disabled("#stop") and page.is_enabled("#generate")
    assert "Done:" in page.text_content("#status") and "70% logic" in page.text_content("#status")

    # A switch turns tinting off (and the page remembers it).
    page.click("#tint")
    assert "no-tint" in page.get_attribute("#panes", "class")
    assert set(page.eval_on_selector_all("#story .tok .ink", "els => els.map(e => getComputedStyle(e).backgroundColor)")) \
        == {"rgba(0, 0, 0, 0)"}
    assert not page.is_visible(".legend-key")
    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert not page.is_checked("#tint") and "no-tint" in page.get_attribute("#panes", "class")
    page.click("#tint")
    assert page.is_checked("#tint") and "no-tint" not in page.get_attribute("#panes", "class")


@pytest.mark.parametrize("weight", [0, 100])
def test_words_written_at_an_end_of_the_slider_are_not_coloured(page, gateway, weight):
    """At 0% or 100% one model wrote every word: colour would say nothing, so there is none,
    and the inspector names the one model that was asked."""
    fill_settings(page, seed=3, max_tokens=20, weight=weight, split=False)
    page.click("#generate")
    wait_done(page)
    classes = page.eval_on_selector_all("#story .tok", "els => els.map(e => e.className)")
    assert classes and set(classes) == {"tok by-none"}
    page.click("#story .tok >> nth=0")
    summary = page.text_content("#inspector-summary")
    name, other = ("BDH", "GPT-2") if weight else ("GPT-2", "BDH")
    assert f"Written by {name} alone" in summary and f"{other} was not asked" in summary


def test_the_token_inspector_opens_by_click_keyboard_and_tap(page, gateway, open_page):
    fill_settings(page, seed=5, max_tokens=30, weight=40)
    page.click("#generate")
    wait_done(page, *ALL_PANES)
    api = api_generate(gateway, prompt=PROMPT, seed=5, max_new_tokens=30, logic_weight=0.4, temperature=1.0,
                       top_k=0, top_p=1.0, blend="linear", top_alternatives=5)
    shown = [t for t in api["tokens"] if t["text"]]
    assert len(shown) >= 4

    def inspector() -> dict:
        return page.evaluate("""() => {
            const el = document.querySelector('#inspector');
            return {open: !el.hidden, index: el.dataset.tokenIndex, pane: el.dataset.pane,
                    title: el.querySelector('#inspector-title').textContent,
                    summary: el.querySelector('#inspector-summary').textContent,
                    cols: [...el.querySelectorAll('.alt-col')].map(c => ({
                        name: c.querySelector('h4').textContent,
                        alts: [...c.querySelectorAll('li')].map(li => [li.querySelector('.alt-text').textContent,
                                                                       li.classList.contains('is-chosen')])}))};
        }""")

    # Click: each model's probability, the blend's, the weight in effect and each model's top 5.
    page.click("#story .tok >> nth=2")
    box = inspector()
    t = shown[2]
    assert box["open"] and box["index"] == "2" and box["pane"] == "pane-blend"
    assert visible(t["text"]) in box["title"]
    assert "written at 40% logic" in box["summary"] and "Blend " in box["summary"]
    # Each model's part of the blend (what the tint shows), larger first.
    s = share(0.4, t["p_bdh"], t["p_gpt2"])
    parts = [("BDH", s), ("GPT-2", 1 - s)]
    (lead, x), (other, _) = parts if s > 0.5 else parts[::-1]
    assert f"weighted by the slider, {lead} brought " in box["summary"] and f" of it and {other} " in box["summary"], box
    if 0.005 < x < 0.995:
        assert f"brought {js_round(x * 100)}% of it" in box["summary"], box
    assert [c["name"] for c in box["cols"]] == ["Blend", "GPT-2", "BDH"]
    for col, role in zip(box["cols"], ("blend", "gpt2", "bdh")):
        assert [a for a, _ in col["alts"]] == [visible(a["text"]) for a in t["alternatives"][role]]
        assert [chosen for _, chosen in col["alts"]] == [a["id"] == t["id"] for a in t["alternatives"][role]]
    assert page.is_visible("#inspector .alt-col li >> nth=4")

    # Keyboard: Esc closes it and leaves focus on the word; arrows walk the story with it open.
    page.keyboard.press("Escape")
    assert not inspector()["open"]
    assert page.evaluate("document.activeElement.dataset.i") == "2"
    # From inside the panel too (Enter goes in), and with its × button: closed, back on the word.
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    assert inspector()["open"] and page.evaluate("document.getElementById('inspector').contains(document.activeElement)")
    page.keyboard.press("Escape")
    assert not inspector()["open"] and page.evaluate("document.activeElement.dataset.i") == "2"
    page.click("#story .tok >> nth=2")
    page.click("#inspector-close")
    assert not inspector()["open"] and page.evaluate("document.activeElement.dataset.i") == "2"
    page.keyboard.press("ArrowRight")
    box = inspector()
    assert box["open"] and box["index"] == "3" and visible(shown[3]["text"]) in box["title"]
    # Each pane is one tab stop: Tab goes on to the blend's buttons (the panel closes), then to
    # the side panes' words, whose panel says who wrote them.
    page.keyboard.press("Tab")
    assert not inspector()["open"] and page.evaluate("document.activeElement.id") == "continue"
    page.focus("#pane-bdh .tok[tabindex='0']")
    box = inspector()
    assert box["open"] and box["pane"] == "pane-bdh" and "Written by BDH alone" in box["summary"]
    # No blend of its own to list, and at 100% logic GPT-2 is not asked at all.
    assert "GPT-2 was not asked" in box["summary"] and [c["name"] for c in box["cols"]] == ["BDH"]
    page.keyboard.press("Tab")  # out of the story: the panel closes
    assert not inspector()["open"]
    # A click elsewhere closes it too.
    page.click("#story .tok >> nth=0")
    assert inspector()["open"]
    page.click("#story-title")
    assert not inspector()["open"]

    # A tap on a phone opens it, inside the screen and clear of the dock.
    phone = open_page(gateway.url + "/", 390, 844, phone=True)
    fill_settings(phone, seed=5, max_tokens=30, split=False, weight=40)
    phone.tap("#generate")
    wait_done(phone)
    phone.locator("#story .tok >> nth=3").scroll_into_view_if_needed()
    phone.tap("#story .tok >> nth=3")
    phone.wait_for_selector("#inspector:not([hidden])")
    r = phone.eval_on_selector("#inspector", "e => e.getBoundingClientRect().toJSON()")
    dock = phone.eval_on_selector(".dock", "e => e.getBoundingClientRect().top")
    assert r["left"] >= 0 and r["right"] <= 390 and r["top"] >= 0 and r["bottom"] <= dock + 1, (r, dock)
    assert visible(shown[3]["text"]) in phone.text_content("#inspector-title")


def test_stop_cancels_the_generation_on_both_servers(page, gateway, model_servers):
    fill_settings(page, max_tokens=200, split=False)
    assert open_sessions(model_servers["bdh"]) == 0 and open_sessions(model_servers["gpt2"]) == 0
    _, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        assert open_sessions(model_servers["bdh"]) == 1  # our story, waiting on frozen GPT-2
        page.click("#stop")
        # GPT-2 is still frozen: only the page's Stop can have ended the BDH session.
        assert wait_until(lambda: open_sessions(model_servers["bdh"]) == 0), "BDH session still open after Stop"
        page.wait_for_selector("#pane-blend[data-state='stopped']", timeout=WAIT_MS)
        assert page.text_content("#status") == "Stopped."
        assert "stopped after" in page.text_content("#pane-blend .pane-meta")
    finally:
        freeze.__exit__(None, None, None)
    assert wait_until(lambda: open_sessions(model_servers["gpt2"]) == 0), "GPT-2 session still open after Stop"
    assert page.is_enabled("#generate") and page.is_disabled("#stop")
    assert page.is_hidden("#error")  # stopping is not a failure


def test_stop_after_the_blend_finished_stops_the_side_panes_and_the_next_story_starts(page, gateway, model_servers):
    """Split view: the blend is done while "GPT-2 alone" still writes; Esc stops it, the status
    settles (not "Stopping…" for ever) and Enter in the prompt writes the next story."""
    seed = long_story_seed(gateway, 0.0, 200)  # GPT-2 alone runs all 200 tokens: time to stop it
    fill_settings(page, max_tokens=200, seed=seed, split=True, weight=65)
    # The side panes' requests wait until the blend is done, so the blend surely ends first.
    held = []
    page.route("**/generate_stream",
               lambda route: held.append(route) if route.request.post_data_json["logic_weight"] in (0, 1)
               else route.continue_())
    page.click("#generate")
    wait_done(page)
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done:')", timeout=WAIT_MS)
    done = page.text_content("#status")
    assert len(held) == 2
    for route in held:
        route.continue_()
    page.wait_for_selector("#pane-gpt2 .tok", timeout=WAIT_MS)
    with frozen(model_servers["gpt2"]):
        assert page.get_attribute("#pane-gpt2", "data-state") == "streaming"
        page.keyboard.press("Escape")
        page.wait_for_selector("#pane-gpt2[data-state='stopped']", timeout=WAIT_MS)
        page.wait_for_function("!document.querySelector('#status').textContent.includes('Stopping')", timeout=WAIT_MS)
        assert page.text_content("#status").startswith(done)  # the blend's "Done…" stays
        assert page.get_attribute("#pane-blend", "data-state") == "done"
        assert page.is_enabled("#generate") and page.is_disabled("#stop") and page.is_hidden("#error")
    page.unroute("**/generate_stream")
    # Enter in the prompt writes the next story.
    old_id = page.get_attribute("#story", "data-generation-id")
    page.fill("#max-tokens", "5")
    page.focus("#prompt")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#story').dataset.generationId !== {json.dumps(old_id)}",
                           timeout=WAIT_MS)
    wait_done(page, *ALL_PANES)
    assert page.text_content("#status").startswith("Done:")


def test_a_drag_steers_once_and_the_page_reports_the_weight_in_effect(page, gateway, model_servers, artifacts):
    fill_settings(page, max_tokens=200, split=False)
    assert page.input_value("#weight") == "50"
    steers = record_requests(page, "/generations/")
    gen_id, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        before = len(page.query_selector_all("#story .tok"))
        assert "Writing at 50% logic" in page.text_content("#status")
        # A slow drag from the thumb (50%) to near the right end, through many values.
        box = page.locator("#weight").bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] / 2, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.9, y, steps=25)
        page.mouse.up()
        final = int(page.input_value("#weight"))
        assert final >= 75
        page.wait_for_function(f"document.querySelector('#status').textContent.includes('Steering to {final}%')",
                               timeout=WAIT_MS)
        # One request, with the value the drag ended on; the status still tells the weight in effect.
        assert steers == [{"logic_weight": final / 100}]
        assert "Writing at 50% logic" in page.text_content("#status")
        assert httpx.get(f"{gateway.url}/generations/{gen_id}").json()["logic_weight"] == final / 100
    finally:
        freeze.__exit__(None, None, None)
    page.wait_for_function(f"document.querySelector('#status').dataset.weight === '{final}'", timeout=WAIT_MS)
    wait_done(page)
    assert len(steers) == 1

    # One marker, where the weight changed: tokens before it at 50%, after it at the drag's end.
    marks = page.query_selector_all("#story .steer-mark")
    assert len(marks) == 1 and marks[0].get_attribute("data-weight") == str(final)
    sides = page.evaluate("""() => {
        const out = {before: [], after: []}; let seen = false;
        for (const el of document.querySelectorAll('#story .tok, #story .steer-mark')) {
            if (el.classList.contains('steer-mark')) seen = true;
            else out[seen ? 'after' : 'before'].push(el.dataset.weight);
        }
        return out;
    }""")
    assert len(sides["before"]) >= before and set(sides["before"]) == {"50"}
    assert sides["after"] and set(sides["after"]) == {str(final)}
    assert f"ending at {final}% logic" in page.text_content("#status")
    # The weight-over-time strip under the story and the story's label both carry the change...
    strip = page.get_attribute("#strip-svg", "aria-label")
    assert "50% from token 1" in strip and f"{final}% from token" in strip and page.is_visible("#strip")
    assert page.text_content("#blend-badge") == f"50 → {final}% logic"
    page.locator("#pane-blend").screenshot(path=str(artifacts / "story-steered.png"))
    # ...and keep it when the slider moves after the story.
    set_weight(page, 10)
    assert page.text_content("#blend-badge") == f"50 → {final}% logic"
    assert len(page.query_selector_all("#story .steer-mark")) == 1 and len(steers) == 1


def test_a_stall_is_announced_and_the_readiness_badge_follows_at_once(page, gateway, model_servers):
    page.wait_for_selector("#readiness.pill-ok", timeout=WAIT_MS)
    fill_settings(page, max_tokens=200, split=False)
    _, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        # Two seconds without a token: the page says what it waits for, named by the gateway
        # (GPT-2 is the frozen one)...
        page.wait_for_function(
            "document.querySelector('#status').textContent.includes('Waiting for the creativity model (GPT-2)…')",
            timeout=WAIT_MS)
        assert "waiting for the creativity model (GPT-2)…" in page.text_content("#pane-blend .pane-meta")
        # ...and asks the gateway at once, whose health check finds the frozen server (the
        # page polls only every 10 s otherwise; the check itself waits connect_timeout_s).
        page.wait_for_selector("#readiness.pill-bad", timeout=WAIT_MS)
    finally:
        freeze.__exit__(None, None, None)
    # Tokens again: the note goes, the badge recovers.
    page.wait_for_function("!document.querySelector('#status').textContent.includes('Waiting')", timeout=WAIT_MS)
    page.wait_for_selector("#readiness.pill-ok", timeout=WAIT_MS)
    wait_done(page)
    assert page.get_attribute("#pane-blend", "data-stalled") is None
    assert page.is_hidden("#error")


def test_continue_writes_on_from_the_story_so_far(page, gateway):
    seed = long_story_seed(gateway, 0.5, 200)
    fill_settings(page, max_tokens=24, seed=seed, split=False)
    streams = record_requests(page, "/generate_stream")
    page.click("#generate")
    wait_done(page)
    first = story_text(page)
    assert page.is_enabled("#continue") and "reached the length you set" in page.text_content("#pane-blend .pane-meta")
    page.click("#continue")
    wait_done(page)
    # A new generation: the prompt plus the text so far, the same settings, a seed derived from the story's.
    assert len(streams) == 2
    cont = streams[1]
    assert cont["prompt"] == PROMPT + first and cont["seed"] == seed + 1
    assert {k: cont[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "blend", "logic_weight")} \
        == {k: streams[0][k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "blend", "logic_weight")}
    more = api_generate(gateway, **{k: v for k, v in cont.items() if k != "top_alternatives"})["text"]
    assert story_text(page) == first + more and more
    # Still one story: one prompt at its head, and the strip spans both parts.
    assert len(page.query_selector_all("#story .prompt-head")) == 1
    assert page.text_content("#pane-blend .pane-meta").startswith(f"{48} word pieces")


def test_errors_give_one_plain_message_with_retry(browser, start_gateway, open_page):
    # A GPT-2 "server" that accepts connections and never answers: requests to it hang until
    # the gateway's connect timeout, which holds the gateway's only slot meanwhile.
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    try:
        gw = start_gateway(gpt2_address=f"127.0.0.1:{black_hole.getsockname()[1]}", max_concurrent=1,
                           connect_timeout_s=3, retry_interval_s=600)
        page = open_page(gw.url + "/")
        page.wait_for_selector("#readiness.pill-bad", timeout=WAIT_MS)

        # 429: someone else holds the only slot.
        holder = threading.Thread(target=lambda: httpx.post(gw.url + "/generate", json={"prompt": PROMPT},
                                                            timeout=60))
        holder.start()
        assert wait_until(lambda: "plotarmour_gateway_active_generations 1.0"
                          in httpx.get(gw.url + "/metrics").text)
        page.click("#generate")
        page.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
        message = page.text_content("#error-message")
        assert "busy" in message and "429" not in message  # plain words; the status is under Details
        assert "429" in page.text_content("#error-detail")
        page.wait_for_selector("#pane-blend[data-state='error']")
        assert page.get_attribute("#pane-gpt2", "data-state") == page.get_attribute("#pane-bdh", "data-state") == "skipped"
        assert page.is_visible("#retry") and page.is_hidden("#error-continue")  # nothing written to continue
        holder.join(30)

        # 503: the slot is free now, but the GPT-2 server does not answer. Retry sends it again.
        page.click("#retry")
        page.wait_for_function("document.querySelector('#error-detail').textContent.includes('503')", timeout=WAIT_MS)
        # The model named in words with what to do; nothing internal, under Details neither.
        assert "The creativity model (GPT-2) is not answering" in page.text_content("#error-message")
        assert "127.0.0.1" not in page.text_content("#error")
        assert page.is_enabled("#generate") and page.is_disabled("#stop")
        assert page.inner_text("body").count(page.text_content("#error-message")) == 1
    finally:
        black_hole.close()


# ---- output ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1440, 1366, 390])
def test_the_slider_never_moves_while_it_is_dragged(open_page, gateway, width):
    """From 0% to 100% the label above the slider keeps its size, so the slider stays put
    under the pointer (a value growing a digit re-wrapped the label and moved it 19 px)."""
    page = open_page(gateway.url + "/", width, 900 if width > 500 else 844, phone=width < 500)
    tops = set()
    for value in (0, 5, 9, 10, 50, 99, 100):
        page.fill("#weight", str(value))
        page.dispatch_event("#weight", "input")
        tops.add(round(page.eval_on_selector("#weight", "e => e.getBoundingClientRect().top"), 1))
    assert len(tops) == 1, tops


def test_the_page_starts_at_its_default_preset_shown_as_selected(page):
    """The default preset (presets.js) fills the form, is marked pressed, and is what the
    native API draws with when a request names no sampling settings."""
    from services.gateway.presets import DEFAULT_PRESET, NATIVE_DEFAULTS, PRESETS

    d = PRESETS[DEFAULT_PRESET]
    assert page.eval_on_selector_all("[data-preset]", "els => els.filter(e => e.ariaPressed === 'true')"
                                                      ".map(e => e.dataset.preset)") == [DEFAULT_PRESET]
    assert float(page.input_value("#weight")) == round(100 * d.logic_weight)
    assert (float(page.input_value("#temperature")), int(page.input_value("#top-k")),
            float(page.input_value("#top-p"))) == (d.temperature, d.top_k, d.top_p)
    assert NATIVE_DEFAULTS == {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p}


def test_copy_download_share_history_examples_and_presets(page, gateway, open_page):
    fill_settings(page, seed=21, max_tokens=40, split=False, weight=60)
    assert page.is_disabled("#copy") and page.is_disabled("#share")
    page.click("#generate")
    wait_done(page)
    text = story_text(page)

    page.click("#copy")
    page.wait_for_function("document.querySelector('#output-note').textContent.includes('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == PROMPT + text

    with page.expect_download() as dl:
        page.click("#download")
    assert dl.value.suggested_filename == "plotarmour-story-21.md"
    md = Path(dl.value.path()).read_text(encoding="utf-8")
    assert (PROMPT + text).strip() in md
    for line in ("- Logic weight: 60% logic (BDH), 40% creativity (GPT-2)", "- Blend: Either can lead", "- Seed: 21",
                 "- Temperature: 1 · top-k: none · top-p: 1", "- Max new tokens: 40"):
        assert line in md, md

    page.click("#share")
    page.wait_for_function("document.querySelector('#output-note').textContent.includes('link')")
    link = page.evaluate("navigator.clipboard.readText()")
    assert link == page.url and "#" in link and "s=21" in link
    # Opening the link restores the page and writes the same story again at once, saying so.
    other = open_page(link)
    assert other.input_value("#prompt") == PROMPT and other.input_value("#weight") == "60"
    assert other.input_value("#seed") == "21" and other.input_value("#max-tokens") == "40"
    wait_done(other)
    assert not other.is_checked("#split") and other.text_content("#status").startswith("The shared story, written again")
    assert story_text(other) == text
    # The author's own tab, reloaded with the link in its address: the settings, no new run.
    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert "link you shared" in page.text_content("#status") and page.input_value("#seed") == "21"
    assert page.get_attribute("#pane-blend", "data-state") not in ("waiting", "streaming")

    # This browser's history: the run is listed and restores its settings and its text.
    assert page.text_content("#history-count") == "(1)"
    page.fill("#prompt", "Something else")
    set_weight(page, 5)
    page.click("#history summary")
    page.click("#history-list .history-item >> nth=0")
    assert page.input_value("#prompt") == PROMPT and page.input_value("#weight") == "60"
    assert page.text_content("#pane-blend .restored") == text and "Restored" in page.text_content("#status")
    assert not page.is_disabled("#copy") and not page.is_disabled("#share")
    page.click("#generate")  # the same story again: still one entry, not two
    wait_done(page)
    assert story_text(page) == text and page.text_content("#history-count") == "(1)"
    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert page.text_content("#history-count") == "(1)"
    stored = json.loads(page.evaluate("localStorage.getItem('plotarmour.history')"))
    assert stored[0]["setup"]["seed"] == 21 and stored[0]["text"] == text

    # Example openings and the three presets.
    example = page.get_attribute("[data-example] >> nth=1", "data-example")
    page.click("[data-example] >> nth=1")
    assert page.input_value("#prompt") == example
    open_settings(page)
    for name, (w, temp, k, p) in {"wild": (15, "1", "0", "1"), "balanced": (50, "0.9", "0", "0.95"),
                                  "strict": (85, "0.7", "20", "0.9")}.items():
        page.click(f"[data-preset={name}]")
        assert (page.input_value("#weight"), page.input_value("#temperature"), page.input_value("#top-k"),
                page.input_value("#top-p")) == (str(w), temp, k, p)
        assert page.eval_on_selector_all("[data-preset]", "els => els.filter(e => e.ariaPressed === 'true')"
                                                          ".map(e => e.dataset.preset)") == [name]


# ---- the logic check ------------------------------------------------------------------------------


# The page's own example ("garden" after "Ben was in the kitchen with his mom.") is one the
# shipped pair flags; the tiny test models know only tests/corpus.py's stories and flag
# nothing in it. In their own words they do: the story's finder is Tom, so GPT-2 expected
# "Tom" where the draft has "Mia" (0.76 displaced bits: flagged from sensitivity 0.85 up).
EXAMPLE = ("Ben was in the kitchen with his mom.", "He looked around the garden.")
CONTEXT, DRAFT, SENSITIVITY = "Once upon a time, Tom found a red ball.", "Mia was happy.", "1"


def validator_answer(gateway, context: str, draft: str, sensitivity: str) -> dict:
    """/validate's answer for what the page sends (it joins its draft to the context with a space)."""
    r = httpx.post(gateway.url + "/validate", json={"context": context, "draft": " " + draft,
                                                    "sensitivity": float(sensitivity)}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_logic_check_shows_a_heatmap_reasons_and_what_the_models_expected(page, gateway):
    api = validator_answer(gateway, CONTEXT, DRAFT, SENSITIVITY)
    assert api["contradictions"], "the tiny models flag nothing in the test's draft"
    assert any("where GPT-2 expected 'Tom'" in c["reason"] for c in api["contradictions"]), api["contradictions"]
    # The page's own example (its draft has no leading space: the page joins it to the context).
    assert (page.input_value("#v-context"), page.input_value("#v-draft")) == EXAMPLE
    assert page.input_value("#v-sensitivity") == "0.5" and page.text_content("#v-sensitivity-out") == "0.50"
    assert "higher flags more" in page.text_content("#v-sensitivity-hint").lower()
    page.fill("#v-context", CONTEXT)
    page.fill("#v-draft", DRAFT)
    page.fill("#v-sensitivity", SENSITIVITY)
    assert page.text_content("#v-sensitivity-out") == "1.00"
    page.focus("#v-draft")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#v-result:not([hidden])", timeout=WAIT_MS)
    # A heatmap over every word, reading as the draft character for character.
    assert page.text_content("#v-draft-view") == page.input_value("#v-draft")
    heats = page.eval_on_selector_all("#v-draft-view .w", "els => els.map(e => [e.textContent, Number(e.dataset.heat)])")
    assert [w for w, _ in heats] == [w["text"] for w in api["words"]]
    assert all(0 <= h <= 1 for _, h in heats) and len({h for _, h in heats}) > 1
    # Each flagged word (merged as the validator merged them) with its reason and what each model expected.
    marks = page.eval_on_selector_all("#v-draft-view mark.flag", "els => els.map(e => e.textContent)")
    assert marks == [c["text"] for c in api["contradictions"]]
    reasons = page.query_selector_all("#v-reasons li")
    assert len(reasons) == len(api["contradictions"])
    for li, c in zip(reasons, api["contradictions"]):
        assert li.query_selector("q").text_content() == c["text"].strip()
        assert c["reason"] in li.query_selector(".reason").text_content()
        expected = li.eval_on_selector_all("dt", "els => els.map(e => e.textContent)")
        assert expected == [f"{n} expected" for n, k in (("GPT-2", "gpt2"), ("BDH", "bdh")) if c["expected"][k]]
    first = page.query_selector("#v-draft-view mark.flag")
    assert first.get_attribute("aria-describedby") == reasons[0].get_attribute("id")
    assert "stand" in page.text_content("#v-verdict") and "score" in page.text_content("#v-verdict")

    # A draft that fits its context: nothing stands out, and the page says so in plain words.
    page.fill("#v-context", "Once upon a time, Tom found a big tree. Tom was happy.")
    page.fill("#v-draft", " Tom showed a big tree to Mia.")
    page.fill("#v-sensitivity", "0.5")
    page.click("#validate")
    page.wait_for_function("document.querySelector('#v-verdict').textContent.startsWith('Nothing')",
                           timeout=WAIT_MS)
    assert not page.query_selector_all("#v-draft-view mark.flag") and not page.query_selector_all("#v-reasons li")
    # The verdict agrees with the heatmap: an all-clear only when no word is warm; else it names
    # the warmest words, hottest first, and is not shown as an all-clear.
    heats = page.eval_on_selector_all("#v-draft-view .w", "els => els.map(e => [e.textContent.trim(), "
                                                            "Number(e.dataset.heat)])")
    warm = sorted((h, w) for w, h in heats if h >= 0.5 and w.isalnum())
    verdict = page.text_content("#v-verdict")
    if warm:
        assert verdict.startswith("Nothing crosses the bar, but") and f"“{warm[-1][1]}”" in verdict, verdict
        assert "ok" not in page.get_attribute("#v-verdict", "class").split()
    else:
        assert verdict.startswith("Nothing stands out") and "ok" in page.get_attribute("#v-verdict", "class").split()
    assert "Consistent" not in page.text_content("#v-result")
    # "Use the story" fills the check from the last story: its prompt as context, its text as draft.
    fill_settings(page, seed=8, max_tokens=20, split=False)
    page.click("#generate")
    wait_done(page)
    page.click("#use-story")
    assert page.input_value("#v-context") == PROMPT and page.input_value("#v-draft") == story_text(page)


# ---- layout --------------------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(1366, 768), (1024, 768)])
def test_generate_and_stop_stay_reachable_while_a_story_is_read(open_page, gateway, model_servers, width, height):
    page = open_page(gateway.url + "/", width, height)
    fill_settings(page, max_tokens=200, split=True)
    _, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        for where in ("#story .tok >> nth=-1", "#validator-title", "footer"):
            page.locator(where).scroll_into_view_if_needed()
            assert reachable(page, "#stop") and reachable(page, "#weight"), where
        assert page.evaluate("scrollY") > 0
        page.click("#stop")  # a real click, where the reader is
        page.wait_for_selector("#pane-blend[data-state='stopped']", timeout=WAIT_MS)
    finally:
        freeze.__exit__(None, None, None)
    assert reachable(page, "#generate")
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_on_a_phone_enter_adds_a_line_and_the_slider_stays_reachable(open_page, gateway, model_servers):
    page = open_page(gateway.url + "/", 390, 844, phone=True)
    assert page.is_visible(".when-touch") and not page.is_visible(".when-keys")
    page.focus("#prompt")
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type("Then")
    assert page.input_value("#prompt") == PROMPT + "\nThen" and page.is_disabled("#stop")  # no story started
    fill_settings(page, max_tokens=200, split=True)
    assert page.locator("#generate").bounding_box()["height"] >= 40  # a thumb-sized button generates
    _, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        for where in ("#story .tok >> nth=-1", "#pane-bdh"):
            page.locator(where).scroll_into_view_if_needed()
            assert reachable(page, "#weight") and reachable(page, "#stop"), where
        # In the logic check too: its dock steps aside only while no story is being written.
        page.evaluate("document.activeElement.blur()")  # (focus inside the dock keeps it anyway)
        page.evaluate("document.getElementById('validator').scrollIntoView({block: 'start'})")
        page.wait_for_timeout(400)  # (the observer, and a slide away if there were one)
        assert reachable(page, "#weight") and reachable(page, "#stop")
        # The three panes stacked, the blend first; nothing wider than the screen.
        boxes = [page.locator(p).bounding_box() for p in ALL_PANES]
        assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        page.tap("#stop")
        page.wait_for_selector("#pane-blend[data-state='stopped']", timeout=WAIT_MS)
    finally:
        freeze.__exit__(None, None, None)


def _dress(page, gateway, *, split=True, validate=True):
    """A finished story with a word's details open and, unless told not to, a logic check's result."""
    fill_settings(page, seed=3, max_tokens=80, split=split, weight=65)
    page.evaluate("document.getElementById('settings').open = false")
    page.click("#generate")
    wait_done(page, *(ALL_PANES if split else ALL_PANES[:1]))
    if validate:
        page.click("#validate")
        page.wait_for_selector("#v-result:not([hidden])", timeout=WAIT_MS)
    page.evaluate("window.scrollTo(0, 0)")
    # On a phone the dock stepped aside in the logic check: let it slide back before a screenshot.
    page.wait_for_function("!document.querySelector('.dock').classList.contains('is-away')"
                           " && !document.querySelector('.dock').getAnimations().length", timeout=WAIT_MS)
    page.click("#story .tok >> nth=4")
    page.wait_for_selector("#inspector:not([hidden])")


def test_screenshots(open_page, gateway, artifacts):
    shots = []
    for name, (w, h), phone in (("1440x900", (1440, 900), False), ("1366x768", (1366, 768), False),
                                ("390x844", (390, 844), True)):
        page = open_page(gateway.url + "/", w, h, phone=phone)
        page.screenshot(path=str(artifacts / f"page-{name}-empty.png"))
        _dress(page, gateway)
        page.wait_for_selector("#readiness.pill-ok", timeout=WAIT_MS)
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        for kind, full in (("story", False), ("full", True)):
            path = artifacts / f"page-{name}-{kind}.png"
            page.screenshot(path=str(path), full_page=full)
            shots.append(path)
    for path in shots:
        assert path.stat().st_size > 10_000
        print(f"screenshot: {path}")


def test_axe_finds_no_serious_or_critical_violations(axe_script, open_page, gateway):
    found = {}
    page = open_page(gateway.url + "/")
    found["empty"] = run_axe(page, axe_script)
    _dress(page, gateway)
    found["story, word details, check"] = run_axe(page, axe_script)
    dark = open_page(gateway.url + "/", color_scheme="dark")
    _dress(dark, gateway, validate=False)
    found["dark"] = run_axe(dark, axe_script)
    phone = open_page(gateway.url + "/", 390, 844, phone=True)
    found["phone"] = run_axe(phone, axe_script)
    assert not any(found.values()), json.dumps(found, indent=1)


def test_a_gateway_with_an_api_key_asks_for_it(open_page, start_gateway):
    gw = start_gateway(api_key="e2e-secret")
    page = open_page(gw.url + "/")  # the page itself is public
    fill_settings(page, seed=2, max_tokens=20, split=False)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#error-detail').textContent.includes('401')", timeout=WAIT_MS)
    assert "API key" in page.text_content("#error-message")
    assert page.is_visible("#api-key")
    page.fill("#api-key", "e2e-secret")
    page.dispatch_event("#api-key", "change")
    page.click("#generate")
    wait_done(page)
    assert page.is_hidden("#error") and story_text(page)
