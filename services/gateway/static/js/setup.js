// The form as a setup (what writes a story: output.js lists its fields): read from the form
// for Generate, written into it from a preset, a share link or a history entry. Also the
// form's own helpers: the example openings, the preset buttons and the blend menu's labels.

import { BLEND_LABELS, percent } from "./format.js";
import { replaySteering, setReplay, showWeight, weight } from "./mix.js";
import { $, state, touch } from "./page.js";
import { DEFAULT_PRESET, PRESETS } from "./presets.js";
import { showError } from "./status.js";
import { scheduleSteer } from "./steering.js";

const form = $("generate-form");
const slider = $("weight");

/** The setup the form describes, or null (with the problem shown) when a field is invalid. */
export function readSetup() {
  for (const el of form.querySelectorAll("input, textarea, select")) {
    if (!el.checkValidity()) {
      const name = el.labels && el.labels[0] ? el.labels[0].textContent.trim().split("\n")[0] : el.name;
      if (el.closest("details")) el.closest("details").open = true;
      showError(`${name}: ${el.validationMessage}`, { retry: false });
      el.setAttribute("aria-invalid", "true");
      el.focus();
      return null;
    }
  }
  let seed = $("seed").value === "" ? null : Number($("seed").value);
  if (seed !== null && !Number.isSafeInteger(seed)) {
    $("settings").open = true;
    showError(`Seed: use a whole number up to ${Number.MAX_SAFE_INTEGER}.`, { retry: false });
    $("seed").focus();
    return null;
  }
  // Draw the seed here rather than on the gateway so the side panes and Share can reuse it.
  if (seed === null) seed = Math.floor(Math.random() * 2 ** 31);
  return {
    prompt: $("prompt").value,
    logic_weight: weight(),
    blend: $("blend").value,
    max_new_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_k: Number($("top-k").value),
    top_p: Number($("top-p").value),
    seed,
    split: $("split").checked,
    steering: replaySteering(),
  };
}

/** Fill the form from a setup (a share link, a history entry); missing fields stay as they are. */
export function applySetup(setup) {
  if (typeof setup.prompt === "string") $("prompt").value = setup.prompt;
  if (setup.logic_weight !== null && setup.logic_weight !== undefined) slider.value = String(percent(setup.logic_weight));
  const set = (id, v) => { if (v !== null && v !== undefined) $(id).value = String(v); };
  set("max-tokens", setup.max_new_tokens);
  set("temperature", setup.temperature);
  set("top-k", setup.top_k);
  set("top-p", setup.top_p);
  set("seed", setup.seed);
  if (setup.blend && [...$("blend").options].some((o) => o.value === setup.blend)) $("blend").value = setup.blend;
  if (typeof setup.split === "boolean") $("split").checked = setup.split;
  setReplay(setup);
  showWeight();
}

/** The page starts at the default preset, shown as selected; a share link replaces it. */
export function showDefaultPreset() {
  const start = PRESETS[DEFAULT_PRESET];
  slider.value = String(percent(start.logic_weight));
  for (const [id, key] of [["temperature", "temperature"], ["top-k", "top_k"], ["top-p", "top_p"]]) {
    $(id).value = String(start[key]);
  }
  showWeight();
}

export function wireSetup() {
  for (const b of document.querySelectorAll("[data-preset]")) {
    b.addEventListener("click", () => {
      applySetup(PRESETS[b.dataset.preset]);
      if (state.run && state.run.id) scheduleSteer();
    });
  }
  for (const b of document.querySelectorAll("[data-example]")) {
    b.addEventListener("click", () => {
      $("prompt").value = b.dataset.example;
      if (!touch) $("prompt").focus();  // (a phone would open its keyboard over the page)
    });
  }
  // The blend menu in a storyteller's words. The gateway fills the menu from its registry,
  // with the formulas as hover text; the page only relabels the choices it knows (the values
  // sent stay the registry's names; an unknown one keeps the server's label).
  for (const option of $("blend").options) {
    const label = BLEND_LABELS[option.value];
    if (label) [option.textContent, option.title] = label;
  }
}
