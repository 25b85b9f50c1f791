"""The web page against the real stack: both model servers (tiny checkpoints, subprocesses
on 127.0.0.1, port 0), the real gateway on a thread, and Debian's headless Chromium driven
by Playwright's sync API. No mocks anywhere between the page and the models.

Everything here skips (with the reason) where Playwright or Chromium is missing, so a
machine without a browser still runs the rest of the suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PLOTARMOUR_CHROMIUM", "/usr/bin/chromium")
# Screenshots land here so CI can keep them; the directory is git-ignored.
ARTIFACTS = Path(__file__).parent / "artifacts"
# axe-core from npm (scripts/install.sh --dev puts it here; never committed).
AXE = Path(os.environ.get("PLOTARMOUR_AXE", Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"))


def _need_browser() -> None:
    pytest.importorskip("playwright.sync_api", reason="the e2e tests need the playwright package")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"the e2e tests need Chromium at {CHROMIUM}")


def _fine_tune(model, ids, steps: int, seed: int):
    """A few hundred AdamW steps on random windows of the corpus: enough for the tiny models
    to write the corpus's stories, so the page shows readable text and the validator has a
    confident logic model to disagree with a draft (an untrained model finds every token
    about equally surprising, so nothing would ever stand out)."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=gen)
        x = torch.stack([ids[s: s + 64] for s in starts])
        if hasattr(model, "transformer"):  # Hugging Face GPT-2 shifts the labels itself
            loss = model(input_ids=x, labels=x).loss
        else:
            loss = model(x, torch.stack([ids[s + 1: s + 65] for s in starts]))[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def storyteller_pair(tiny_pair, corpus_file, tmp_path_factory) -> dict[str, Path]:
    """tiny_pair, fine-tuned on the test corpus (a few seconds on one CPU thread)."""
    _need_browser()  # before paying for the training
    torch = pytest.importorskip("torch")
    from plotarmour.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("storytellers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for i, (name, path) in enumerate(sorted(tiny_pair.items())):
            ckpt = load_checkpoint(path)
            torch.manual_seed(i)
            ids = torch.tensor(ckpt.tokenizer.encode(corpus_file.read_text(encoding="utf-8")).ids)
            model = _fine_tune(ckpt.model, ids, steps=150, seed=i)
            out[name] = save_checkpoint(root / name, model, ckpt.tokenizer, {"note": "tiny, fine-tuned for e2e tests"})
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_servers(storyteller_pair, tmp_path_factory):
    """{"bdh": ServerProcess, "gpt2": ServerProcess}, one pair for the whole e2e session."""
    from plotarmour.modelserver.launch import start_model_server

    started = {}
    try:
        for name in ("bdh", "gpt2"):
            # One thread each: CI machines are small and shared.
            started[name] = start_model_server(name, storyteller_pair[name], workdir=tmp_path_factory.mktemp(f"{name}-e2e"),
                                               threads=1)
        yield started
    finally:
        for server in started.values():
            server.terminate()


@pytest.fixture(scope="module")
def start_gateway(model_servers):
    """Factory: start_gateway(**settings) -> GatewayThread in front of the session's servers
    (settings override, e.g. gpt2_address of a dead port); all are stopped at teardown."""
    from services.gateway.settings import GatewaySettings
    from fake_servers import GatewayThread

    running = []

    def start(**overrides) -> GatewayThread:
        settings = {"gpt2_address": model_servers["gpt2"].address, "bdh_address": model_servers["bdh"].address,
                    "port": 0, **overrides}
        gw = GatewayThread(GatewaySettings(**settings))
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()


@pytest.fixture(scope="module")
def gateway(start_gateway):
    # A long step timeout: tests freeze a model server (SIGSTOP) to hold a story mid-stream.
    return start_gateway(step_timeout_s=60)


# Module scope, not session: Playwright's sync API keeps an event loop running in the
# main thread while it is open, which would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture()
def open_page(browser):
    """Factory: open_page(url, width=1280, height=900, phone=False, **context options) -> a
    fresh tab on url with the page's scripts wired. A phone tab is a touch device with a
    mobile viewport. Fails the test on any uncaught script error in any tab it opened."""
    contexts, errors = [], []

    def open_(url: str, width: int = 1280, height: int = 900, phone: bool = False, **options):
        context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone,
                                      **options)
        contexts.append(context)
        tab = context.new_page()
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(url)
        tab.wait_for_selector("html[data-ready]")
        return tab

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture()
def page(open_page, gateway):
    """A fresh desktop-sized tab on the page (clipboard allowed)."""
    return open_page(gateway.url + "/", permissions=["clipboard-read", "clipboard-write"])


@pytest.fixture()
def fake_gateway(tiny_tokenizer):
    """Factory: fake_gateway(gpt2={...}, bdh={...}, **settings) -> a FakeStack (its .url is the
    gateway's) over two fake servers built with those FakeLanguageModel options; all
    stopped at teardown."""
    from fake_servers import FakeStack, start_fake_stack

    running: list[FakeStack] = []

    def start(gpt2=None, bdh=None, **settings) -> FakeStack:
        running.append(start_fake_stack(tiny_tokenizer, gpt2, bdh, **settings))
        return running[-1]

    yield start
    for stack in reversed(running):
        stack.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def axe_script() -> Path:
    if not AXE.exists():
        pytest.skip(f"axe-core is not installed at {AXE} (scripts/install.sh --dev installs it from npm)")
    return AXE
