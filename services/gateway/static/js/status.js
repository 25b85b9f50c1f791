// What the page says about the story: the status line under the title (the weight in effect,
// a stall, how the run ended) and the one error message above the panes.

import { ApiError } from "./api.js";
import { explain } from "./errors.js";
import { percent } from "./format.js";
import { $, motion, panes, state } from "./page.js";

/** The status line: the weight in effect while a story is written, or a given message. */
export function status(text) {
  const run = state.run;
  if (text === undefined) {
    if (!run || run.ended) return;  // the blend's closing status stays while the side panes finish
    const inEffect = panes.blend.lastWeight;
    if (run.stalledFor) {
      text = `Waiting for ${run.stalledOn}… no new word for ${run.stalledFor} s.`;
    } else if (inEffect === null) {
      text = run.shared ? "Replaying the shared story: reading its opening into the models…"
        : "Reading the start of the story into the models…";
    } else if (run.shared && !run.replayStopped) {
      text = `Replaying the shared story (${percent(inEffect)}% logic now). Move the slider to steer it your way.`;
    } else {
      const s = run.steering;
      const pending = s && s.weight !== inEffect ? ` Steering to ${percent(s.weight)}% from the next word…` : "";
      const took = run.replayStopped ? " The replay stopped: you are steering now." : "";
      text = `Writing at ${percent(inEffect)}% logic.${took}${pending || (took ? "" : " Move the slider to steer.")}`;
    }
  }
  $("status").textContent = text;
  $("status").dataset.weight = panes.blend.lastWeight === null ? "" : String(percent(panes.blend.lastWeight));
}

// The form's field for each request field the gateway may name in a refusal.
const FIELDS = { prompt: "prompt", max_new_tokens: "max-tokens", temperature: "temperature", top_k: "top-k",
                 top_p: "top-p", seed: "seed", blend: "blend" };

export function showError(err, { retry = true, pane = null } = {}) {
  const { message, detail } = typeof err === "string" ? { message: err, detail: "" } : explain(err);
  // The same request again cannot pass where the gateway refused the input itself: fix it, then Generate.
  if (err instanceof ApiError && (err.status === 413 || err.status === 422)) retry = false;
  $("error-message").textContent = pane ? `${pane}: ${message}` : message;
  $("error-detail").textContent = detail;
  $("error-details").hidden = !detail;
  $("retry").hidden = !retry;
  $("error-continue").hidden = !(retry && panes.blend.hasStory);
  $("error").hidden = false;
  // A reader further down the story would not see it: bring it into view.
  const r = $("error").getBoundingClientRect();
  if (r.top < 0 || r.bottom > innerHeight) $("error").scrollIntoView({ behavior: motion(), block: "nearest" });
  const field = err instanceof ApiError && err.field;
  const input = field && FIELDS[field] && $(FIELDS[field]);
  if (input) input.setAttribute("aria-invalid", "true");
}

export function clearError() {
  $("error").hidden = true;
  $("error-message").textContent = "";
  for (const el of $("generate-form").querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}
