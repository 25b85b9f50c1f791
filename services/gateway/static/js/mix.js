// The mix slider: the weight it sets, its label and the blend badge it previews, the preset
// it matches (marked pressed), and the steering of a restored story that Generate replays
// while the slider still starts where that story did.

import { percent } from "./format.js";
import { MAX_STEERING, describeWeights } from "./output.js";
import { $, panes, state } from "./page.js";
import { PRESETS } from "./presets.js";
import { status } from "./status.js";

const slider = $("weight");

// A steered story restored from a share link or the history: Generate sends its schedule,
// as long as the slider still starts where it did ({logic_weight, steering}, or null).
let replay = null;

export function weight() {
  return Number(slider.value) / 100;  // 70 -> 0.7, the same double as Python's 0.7
}

export function showWeight() {
  const pct = Number(slider.value);
  $("weight-pct").textContent = `${pct}%`;
  slider.setAttribute("aria-valuetext", `${pct}% Logic (BDH), ${100 - pct}% Creativity (GPT-2)`);
  slider.style.setProperty("--pct", `${pct}%`);
  // Before any story the badge previews the slider; after, it belongs to the story.
  if (!panes.blend.weights.length) $("blend-badge").textContent = `${pct}% logic`;
  markPreset();
}

/** Press the preset buttons whose numbers the form holds now. */
function markPreset() {
  for (const b of document.querySelectorAll("[data-preset]")) {
    const p = PRESETS[b.dataset.preset];
    const on = percent(p.logic_weight) === Number(slider.value) && p.temperature === Number($("temperature").value)
      && p.top_k === Number($("top-k").value) && p.top_p === Number($("top-p").value);
    b.setAttribute("aria-pressed", String(on));
  }
}

/** The restored story's steering that Generate will replay (null: none), shown under the slider. */
export function setReplay(setup) {
  replay = setup && setup.steering && setup.steering.length
    ? { logic_weight: setup.logic_weight, steering: setup.steering } : null;
  const el = $("replay-note");
  el.hidden = !replay;
  el.textContent = replay ? `Generate replays this story's steering: ${describeWeights(replay.logic_weight, replay.steering)}. `
    + "Move the slider to start from your own weight instead." : "";
}

/** The steering Generate sends: the restored story's, if the slider still starts where it did. */
export function replaySteering() {
  return replay && percent(replay.logic_weight) === percent(weight()) ? replay.steering.slice(0, MAX_STEERING) : [];
}

export function wireMix() {
  // Dragging only moves the label; the story is steered once, where the drag ends (change:
  // steering.js).
  slider.addEventListener("input", () => {
    if (replay) setReplay(null);  // the reader picks their own weight: no replay
    showWeight();
    if (state.run && state.run.id) status();
  });
  for (const id of ["temperature", "top-k", "top-p"]) $(id).addEventListener("input", markPreset);
}
