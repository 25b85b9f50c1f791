// The story's buttons: Copy, Download and Share link (output.js makes what they hand out), the
// note beside them, and which buttons (Continue and Retry too) can be pressed now.

import { MAX_STEERING, copyText, download, markdown, shareLink } from "./output.js";
import { $, panes, state } from "./page.js";

export function updateOutputs() {
  const has = panes.blend.hasStory && state.last;
  $("copy").disabled = !has;
  $("download").disabled = !has;
  $("share").disabled = !has;
  $("continue").disabled = !has || Boolean(state.run);
  $("error-continue").disabled = Boolean(state.run);
  $("retry").disabled = Boolean(state.run);
}

/** The setup that writes the last story again: its start weight and steering as its tokens
 *  were drawn (live steering included), not as the form was when Generate was pressed, and
 *  a story stopped by hand only as far as it went (the same seed writes the same first words). */
export function replaySetup() {
  const last = state.last;
  const setup = last.replay ? { ...last.setup, ...last.replay } : { ...last.setup };
  if (panes.blend.finishReason === "stopped" && !last.continued && !last.restored && panes.blend.tokenCount) {
    setup.max_new_tokens = panes.blend.tokenCount;
  }
  return setup;
}

function note(text) {
  const el = $("output-note");
  el.textContent = text;
  clearTimeout(note.timer);
  note.timer = setTimeout(() => { el.textContent = ""; }, 6000);
}

function storyMarkdown() {
  const setup = replaySetup();
  return markdown({ setup, text: panes.blend.text(), tokens: panes.blend.tokenCount, finish: panes.blend.finishReason,
                    link: shareLink(setup), continued: state.last.continued });
}

export function wireActions() {
  $("copy").addEventListener("click", async () => {
    const ok = await copyText(state.last.setup.prompt + panes.blend.text());
    note(ok ? "Copied the story." : "This browser would not copy: select the text instead.");
  });
  $("download").addEventListener("click", () => {
    download(`plotarmour-story-${state.last.setup.seed}.md`, storyMarkdown());
    note("Downloaded the story with its settings.");
  });
  $("share").addEventListener("click", async () => {
    const setup = replaySetup();
    const link = shareLink(setup);
    history.replaceState(null, "", link);
    // This tab now holds the link in its address: reloading it should not write the story again
    // (shared.js reads this).
    try { sessionStorage.setItem("plotarmour.sharedHere", link); } catch { /* blocked: it replays */ }
    const ok = await copyText(link);
    const steered = setup.steering && setup.steering.length;
    // The gateway replays at most MAX_STEERING changes of weight: say so rather than differ silently.
    const cut = steered > MAX_STEERING ? ` It replays the first ${MAX_STEERING} moves of the slider only.` : "";
    note((ok ? `Copied a link: it writes this story again, with the same start, settings, seed${steered ? " and steering" : ""}.`
      : "The link is in the address bar: copy it from there.") + cut);
  });
}
