"""What a first-time user's trial of the page found, each checked against the real gateway and
model servers (the line-start test uses fake model servers, whose random words break lines
often): a steered story replays from its share link, and a stopped one as far as it went,
history entries bring back their text and say how they differ, the legend and the inspector
say what the colour is (the model that liked a word 3x as much), plain percentages and whole
words in the inspector, plain blend names, a Stop that is no error, no indent at a line's
start, the blend first for the keyboard, the phone's dock out of the way in the logic check,
a neutral sensitivity slider with its hint beside it, and a draft score with words for its
scale."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pagekit import (PLAIN, WAIT_MS, fill_settings, hold_mid_story, long_story_seed, open_settings, reachable,
                     set_weight, story_text, wait_done)

ALL_PANES = ("#pane-blend", "#pane-gpt2", "#pane-bdh")


def stream_requests(page) -> list[dict]:
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.method == "POST" and "/generate_stream" in r.url else None)
    return bodies


def markers(page) -> list[tuple[str, str]]:
    """(token index, weight) of each steering marker in the blend."""
    return page.eval_on_selector_all("#story .steer-mark", "els => els.map(e => [e.dataset.index, e.dataset.weight])")


def format_prob(page, values: list[float]) -> list[str]:
    """The page's own formatProb (format.js) on values."""
    return page.evaluate("async (ps) => { const { formatProb } = await import('/static/js/format.js'); "
                         "return ps.map(formatProb); }", values)


# ---- 1. a steered story replays ------------------------------------------------------------------


def test_a_story_steered_mid_way_is_written_again_from_its_share_link(page, gateway, model_servers, open_page):
    fill_settings(page, max_tokens=200, split=False, weight=50)
    steers: list[dict] = []
    page.on("request", lambda r: steers.append(r.post_data_json) if "/generations/" in r.url else None)
    _, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        set_weight(page, 18)
        page.wait_for_function("document.querySelector('#status').textContent.includes('Steering to 18%')",
                               timeout=WAIT_MS)
    finally:
        freeze.__exit__(None, None, None)
    wait_done(page)
    seed = int(page.input_value("#seed"))
    text = story_text(page)
    [(at, weight)] = markers(page)  # one change: the at-th generated token is the first at 18%
    assert weight == "18" and int(at) >= 1 and steers == [{"logic_weight": 0.18}]
    described = f"50% logic → 18% from token {int(at) + 1}"

    # The share link carries the schedule, compactly ("steer=<at>:<percent>").
    page.click("#share")
    page.wait_for_function("document.querySelector('#output-note').textContent.includes('steering')")
    link = page.evaluate("navigator.clipboard.readText()")
    fragment = parse_qs(urlsplit(link).fragment)
    assert fragment["w"] == ["50"] and fragment["s"] == [str(seed)] and fragment["steer"] == [f"{at}:18"], link
    assert f"steer={at}:18" in link
    # The download's settings and its "Write it again" line, and the history, say it was steered.
    with page.expect_download() as dl:
        page.click("#download")
    md = Path(dl.value.path()).read_text(encoding="utf-8")
    assert f"- Logic weight: 50% logic (BDH), 50% creativity (GPT-2); steered: {described}" in md, md
    assert f"- Write it again: {link}" in md
    page.click("#history summary")
    assert described in page.text_content("#history-list .history-meta")
    assert "50% logic ·" not in page.text_content("#history-list .history-meta")

    # The link in a new tab: the form as it was, the steering announced, and the same story
    # written again at once with its schedule.
    other = open_page(link)
    assert other.input_value("#weight") == "50" and other.input_value("#seed") == str(seed)
    assert other.is_visible("#replay-note") and described in other.text_content("#replay-note")
    wait_done(other)
    assert story_text(other) == text and text
    assert markers(other) == [[at, "18"]]
    # Generate with the side panes sends the schedule for the blend only (they stay pure).
    sent = stream_requests(other)
    open_settings(other)
    other.set_checked("#split", True)
    other.click("#generate")
    wait_done(other, *ALL_PANES)
    assert story_text(other) == text
    blend = [b for b in sent if b["logic_weight"] not in (0, 1)]
    assert len(blend) == 1 and blend[0]["steering"] == [{"at": int(at), "logic_weight": 0.18}]
    assert len(sent) == 3 and all("steering" not in b for b in sent if b["logic_weight"] in (0, 1))
    # Its own share link is the same schedule again.
    other.click("#share")
    other.wait_for_function("document.querySelector('#output-note').textContent.includes('link')")
    assert parse_qs(urlsplit(other.evaluate("location.href")).fragment)["steer"] == [f"{at}:18"]

    # Moving the slider means "my own weight": the replay is dropped, and said to be.
    set_weight(other, 60)
    assert other.is_hidden("#replay-note")
    other.click("#generate")
    wait_done(other, *ALL_PANES)
    assert "steering" not in sent[-3] and "steering" not in sent[-1]

    # Steering during a replay: the person takes over, and the status says the replay stopped.
    third = open_page(link)
    wait_done(third)  # its own replay, as it opened; then once more, steered by hand
    _, freeze = hold_mid_story(third, gateway, model_servers, lambda k: seed)
    try:
        set_weight(third, 80)
        third.wait_for_function(
            "document.querySelector('#status').textContent.includes('The replay stopped: you are steering now.')",
            timeout=WAIT_MS)
    finally:
        freeze.__exit__(None, None, None)
    wait_done(third)
    assert markers(third)[-1][1] == "80"

    # A mangled schedule opens what it can (the gateway would refuse the rest).
    parsed = page.evaluate("async () => (await import('/static/js/output.js')).parseSteering('3:40,9:70,9:10,x')")
    assert parsed == [{"at": 3, "logic_weight": 0.4}, {"at": 9, "logic_weight": 0.7}]


def test_a_story_stopped_by_hand_comes_back_as_far_as_it_went(page, gateway, model_servers, open_page):
    """Stopped mid-way, a story's share link writes it again up to where it stopped; its
    history entry brings back its text; two entries of one opening say how they differ."""
    fill_settings(page, max_tokens=200, split=False, weight=50)
    _, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        page.click("#stop")
    finally:
        freeze.__exit__(None, None, None)
    page.wait_for_selector("#pane-blend[data-state='stopped']", timeout=WAIT_MS)
    text = story_text(page)
    written = int(re.search(r"stopped after (\d+) word pieces", page.text_content("#pane-blend .pane-meta")).group(1))
    assert 0 < written < 200 and text
    page.click("#share")
    page.wait_for_function("document.querySelector('#output-note').textContent.includes('link')")
    link = page.evaluate("navigator.clipboard.readText()")
    assert parse_qs(urlsplit(link).fragment)["n"] == [str(written)], link
    other = open_page(link)
    wait_done(other)  # written again at once, to where it stopped
    assert story_text(other) == text

    # The same opening again, hotter: the history tells the two apart and brings back each text.
    open_settings(page)
    page.fill("#temperature", "1.3")
    page.click("#generate")
    wait_done(page)
    page.click("#history summary")
    metas = page.eval_on_selector_all("#history-list .history-meta", "els => els.map(e => e.textContent)")
    assert len(metas) == 2 and "temperature 1.3" in metas[0] and "temperature 1.3" not in metas[1], metas
    assert "up to 200 word pieces" in metas[0] and f"up to {written} word pieces" in metas[1], metas
    page.click("#history-list .history-item >> nth=1")
    assert page.text_content("#pane-blend .restored") == text
    assert page.input_value("#max-tokens") == str(written)


# ---- 2. and 3. the tint's words, plain percentages, whole words ---------------------------------


def share_percent(x: float) -> str:
    """The inspector's whole percentages: never a misleading 0% or 100%."""
    if 0 < x < 0.005:
        return "< 1%"
    if 0.995 < x < 1:
        return "> 99%"
    return f"{math.floor(x * 100 + 0.5)}%"  # JavaScript's Math.round


def test_the_inspector_gives_each_models_share_and_why_a_word_is_coloured(page, gateway):
    legend = page.text_content("#legend")
    assert "liked at least 3× as much" in legend and "chose it" not in legend
    fill_settings(page, seed=3, max_tokens=80, split=False, weight=65)
    page.click("#generate")
    wait_done(page)
    toks = page.eval_on_selector_all("#story .tok", """els => els.map(e => ({
        bdh: Number(e.dataset.pBdh), gpt2: Number(e.dataset.pGpt2), share: Number(e.dataset.share)}))""")
    long_alts = 0
    page.click("#story .tok >> nth=0")
    for i, t in enumerate(toks):
        if i:
            page.keyboard.press("ArrowRight")
        box = page.evaluate("""() => ({
            index: document.querySelector('#inspector').dataset.tokenIndex,
            summary: document.querySelector('#inspector-summary').textContent,
            probs: [...document.querySelectorAll('#inspector .alt-p')].map(e => e.textContent),
            alts: [...document.querySelectorAll('#inspector .alt-text')].map(e => ({
                text: e.textContent, cut: e.scrollWidth > e.clientWidth + 1
                    || getComputedStyle(e).textOverflow === 'ellipsis'}))})""")
        assert box["index"] == str(i)
        # Each model's probability, then each one's part of the blend, the larger first.
        b, g = 0.65 * t["bdh"], 0.35 * t["gpt2"]
        share = b / (b + g)
        p_gpt2, p_bdh = format_prob(page, [t["gpt2"], t["bdh"]])
        parts = [("BDH", share), ("GPT-2", 1 - share)]
        (lead, x), (other, y) = parts if share > 0.5 else parts[::-1]
        assert box["summary"].startswith("Blend ") and "written at 65% logic" in box["summary"], box["summary"]
        assert f"GPT-2 gave this word {p_gpt2} and BDH {p_bdh}" in box["summary"], box["summary"]
        assert (f"weighted by the slider, {lead} brought {share_percent(x)} of it and {other} {share_percent(y)}."
                in box["summary"]), box["summary"]
        # Then the colour's measure, the weight left out: which model liked it 3x as much.
        ratio = t["bdh"] / t["gpt2"]
        if max(ratio, 1 / ratio) > 3.05:
            more = "BDH" if ratio > 1 else "GPT-2"
            assert f"{more} liked it " in box["summary"] and f"coloured {more}'s." in box["summary"], box["summary"]
        elif max(ratio, 1 / ratio) < 2.95:
            assert box["summary"].endswith("Neither liked it 3× as much as the other: not coloured."), box["summary"]
        # Plain percentages everywhere: never "5.3e-4".
        assert not re.search(r"\de-?\d", box["summary"] + " ".join(box["probs"])), box
        assert all(re.fullmatch(r"< 0\.01%|\d+(\.\d+)?%", p) for p in box["probs"]), box["probs"]
        # Whole words in the three columns, however long ("<|endoftext|>" among them).
        assert not [a for a in box["alts"] if a["cut"]], box["alts"]
        long_alts += sum(len(a["text"]) >= 9 for a in box["alts"])
    assert long_alts, "no long alternative was shown: the test checked no cut-off word"
    assert format_prob(page, [5.3e-4, 3e-6, 0.412, 0.0123, 0]) == ["0.05%", "< 0.01%", "41.2%", "1.23%", "0%"]


# ---- 4. and 5. plain blend names; a Stop is no error ------------------------------------------------


def test_the_blend_menu_speaks_plainly_and_a_stop_is_not_shown_as_an_error(page, gateway, model_servers):
    options = page.eval_on_selector_all("#blend option", "els => els.map(e => [e.value, e.textContent, e.title])")
    assert [v for v, _, _ in options] == ["linear", "geometric"]  # the values the API takes, unchanged
    for value, label, title in options:
        assert value not in label.lower() and title and not re.search(r"[·∝^]|p_", title), (label, title)
    fill_settings(page, max_tokens=200, split=False)
    sent = stream_requests(page)
    _, freeze = hold_mid_story(page, gateway, model_servers, lambda k: long_story_seed(gateway, 0.5, 200, k))
    try:
        page.click("#stop")
        page.wait_for_selector("#pane-blend[data-state='stopped']", timeout=WAIT_MS)
    finally:
        freeze.__exit__(None, None, None)
    assert sent[-1]["blend"] == "linear"
    colours = page.evaluate("""() => ({
        stopped: getComputedStyle(document.querySelector('#pane-blend .pane-meta')).color,
        plain: getComputedStyle(document.querySelector('#status')).color,
        error: getComputedStyle(document.querySelector('#error')).color})""")
    assert colours["stopped"] == colours["plain"] != colours["error"], colours
    assert "stopped after" in page.text_content("#pane-blend .pane-meta")


# ---- 6. no visible indent at the start of a line ----------------------------------------------------


def test_a_line_that_starts_after_a_line_break_shows_no_indent(open_page, fake_gateway, tiny_tokenizer):
    prompt = "Once upon a time.\n"
    # Both fakes write a spaced word right after the prompt's line break, a line break of
    # their own and another spaced word (the blend of two certainties is certain), then go on
    # as they like: a line starts at the story's start and within it.
    tok = tiny_tokenizer
    spaced = next(i for i in range(tok.get_vocab_size()) if re.fullmatch(r" \w+", tok.decode([i])))
    newline = next(i for i in range(tok.get_vocab_size()) if tok.decode([i]) == "\n")
    n = len(tok.encode(prompt).ids)
    opening = {"certain": {n: spaced, n + 1: newline, n + 2: spaced}}
    gw = fake_gateway(gpt2=opening, bdh=opening)
    seed = 1
    tokens = httpx.post(gw.url + "/generate", timeout=30, json={
        "prompt": prompt, "seed": seed, "max_new_tokens": 40, "logic_weight": 0.5, **PLAIN}).json()["tokens"]
    texts = [t["text"] for t in tokens if t["text"]]
    after_break = [i for i, x in enumerate(texts)
                   if re.match(r" \S", x) and (texts[i - 1] if i else prompt).endswith("\n")]
    assert after_break[:2] == [0, 2], texts
    page = open_page(gw.url + "/", permissions=["clipboard-read", "clipboard-write"])
    fill_settings(page, seed=seed, max_tokens=40, split=False)
    page.fill("#prompt", prompt)  # (typed, its Enter would generate)
    page.click("#generate")
    wait_done(page)
    assert story_text(page) == "".join(texts)  # the text itself keeps every space
    for i in after_break:
        gap = page.evaluate("""(i) => {
            const tok = document.querySelectorAll('#story .tok')[i];
            return tok.querySelector('.ink').getBoundingClientRect().left - tok.parentElement.getBoundingClientRect().left;
        }""", i)
        assert abs(gap) < 1, (i, texts[i], gap)  # the word starts at the line's edge
    page.click("#copy")
    page.wait_for_function("document.querySelector('#output-note').textContent.includes('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == prompt + "".join(texts)


# ---- 7. the keyboard reaches the blend first ----------------------------------------------------------


def test_the_keyboard_reaches_the_blend_and_its_buttons_first_and_the_word_details(page, gateway):
    fill_settings(page, seed=5, max_tokens=30, split=True)
    page.click("#generate")
    wait_done(page, *ALL_PANES)
    page.focus("#story-section")  # where "Skip to the story" lands

    def focused() -> str:
        return page.evaluate("""() => { const a = document.activeElement;
            return a.classList.contains('tok') ? a.closest('.pane').id : a.id; }""")

    order = []
    for _ in range(8):
        page.keyboard.press("Tab")
        order.append(focused())
    assert order == ["tint", "pane-blend", "continue", "copy", "download", "share", "pane-gpt2", "pane-bdh"], order
    # The word's details: open on focus, Enter goes into them, Tab comes back to the word, Esc closes.
    for _ in range(6):
        page.keyboard.press("Shift+Tab")
    assert focused() == "pane-blend" and page.is_visible("#inspector")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    assert focused() == "inspector" and page.is_visible("#inspector")
    page.keyboard.press("Tab")
    assert focused() == "pane-blend" and page.evaluate("document.activeElement.dataset.i") == "1"
    page.keyboard.press("Escape")
    assert page.is_hidden("#inspector") and focused() == "pane-blend"
    # Visually GPT-2 alone is still on the left, the blend in the middle.
    x = [page.locator(p).bounding_box()["x"] for p in ("#pane-gpt2", "#pane-blend", "#pane-bdh")]
    assert x[0] < x[1] < x[2]


# ---- 8., 9. and 10. the phone's dock, the sensitivity slider and the draft score ------------------------


def test_on_a_phone_the_dock_leaves_the_logic_check_alone(open_page, gateway):
    phone = open_page(gateway.url + "/", 390, 844, phone=True)
    assert reachable(phone, "#generate") and reachable(phone, "#weight")
    phone.evaluate("document.getElementById('validator').scrollIntoView({block: 'start'})")
    phone.wait_for_function("document.querySelector('.dock').getBoundingClientRect().top >= innerHeight",
                            timeout=WAIT_MS)
    assert not reachable(phone, "#generate") and reachable(phone, "#validate")
    phone.evaluate("document.getElementById('validator').scrollIntoView({block: 'end'})")
    phone.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # the footer: still the logic check
    assert phone.eval_on_selector(".dock", "e => e.classList.contains('is-away')")
    phone.evaluate("document.getElementById('story-section').scrollIntoView({block: 'start'})")
    phone.wait_for_function("document.querySelector('.dock').getBoundingClientRect().bottom <= innerHeight + 1",
                            timeout=WAIT_MS)
    phone.wait_for_timeout(300)  # (the slide back)
    assert reachable(phone, "#generate") and reachable(phone, "#weight")


@pytest.mark.parametrize("width,height,phone", [(1440, 900, False), (390, 844, True)])
def test_the_sensitivity_hint_sits_with_its_neutral_slider(open_page, gateway, width, height, phone):
    page = open_page(gateway.url + "/", width, height, phone=phone)
    Image = pytest.importorskip("PIL.Image")

    def saturated(selector: str) -> int:
        img = Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")
        rgb = img.tobytes()
        return sum(1 for i in range(0, len(rgb), 3) if max(rgb[i:i + 3]) - min(rgb[i:i + 3]) > 60)

    # The mix slider keeps GPT-2 pink to BDH teal; the sensitivity slider is neutral.
    assert saturated("#weight") > 100
    page.locator("#validator").scroll_into_view_if_needed()
    assert saturated("#v-sensitivity") == 0
    geo = page.evaluate("""() => {
        const r = document.createRange(); r.selectNodeContents(document.getElementById('v-sensitivity-hint'));
        const box = (id) => document.getElementById(id).getBoundingClientRect().toJSON();
        return {hint: r.getBoundingClientRect().toJSON(), slider: box('v-sensitivity'), check: box('validate')};
    }""")
    hint, slider, check = geo["hint"], geo["slider"], geo["check"]
    # Right under the slider, starting where its row starts; not out under the Check button.
    assert 0 <= hint["top"] - slider["bottom"] < 24 and hint["left"] < slider["right"], geo
    assert hint["right"] <= check["left"] or hint["bottom"] <= check["top"], geo


def test_the_draft_score_says_what_its_number_means(page, gateway):
    page.click("#validate")
    page.wait_for_selector("#v-result:not([hidden])", timeout=WAIT_MS)
    verdict = page.text_content("#v-verdict")
    score = re.search(r"Draft score: (\d+\.\d\d)", verdict)
    assert score, verdict
    assert f"{score.group(1)}: how much the context makes the draft's words unexpected" in verdict
    assert "Compare drafts for the same context: higher fits it less" in verdict


def test_numbers_and_tokens_are_written_for_a_storyteller(page):
    """The page's own formatting functions, in the browser: plain percentages, and the
    end-of-text token named in words wherever a token is shown (inspector, logic check)."""
    got = page.evaluate("""import('/static/js/format.js').then(f => [
        f.formatProb(0.00053), f.formatProb(0.000001), f.formatProb(0.412),
        f.visible('<|endoftext|>'), f.visible(' garden'), f.visible('\\n'), f.visible(''), f.visible('.\\nThe')])""")
    assert got == ["0.05%", "< 0.01%", "41.2%", "(the end)", "garden", "(line break)", "(nothing)", ". / The"]
