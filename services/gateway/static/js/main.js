// The story page: wires the form, the hemisphere slider, the three story panes, live
// steering and the validator to the gateway's API. No framework and no build step.

import { ApiError, generateStream, info, readiness, setApiKey, steer } from "./api.js";
import { describe } from "./errors.js";
import { percent } from "./format.js";
import { StoryPane } from "./story.js";
import { setupValidator } from "./validator.js";

const $ = (id) => document.getElementById(id);
const form = $("generate-form");
const slider = $("weight");
const generateBtn = $("generate");
const stopBtn = $("stop");
const panes = { blend: new StoryPane($("pane-blend")), gpt2: new StoryPane($("pane-gpt2")), bdh: new StoryPane($("pane-bdh")) };

// The generation in progress: its AbortController (Stop aborts every stream of it: the
// gateway ends a generation whose client left and frees both servers' sessions) and,
// once the first event came, the id that live steering addresses.
let run = null;

// ---- the hemisphere slider -------------------------------------------------------------
function weight() {
  return Number(slider.value) / 100;  // 70 -> 0.7, the same double as Python's 0.7
}

function showWeight() {
  const pct = Number(slider.value);
  $("weight-pct").textContent = `${pct}%`;
  $("blend-badge").textContent = `${pct}%`;
  slider.setAttribute("aria-valuetext", `${pct}% Logic (BDH), ${100 - pct}% Creativity (GPT-2)`);
  slider.style.setProperty("--pct", `${pct}%`);
}

slider.addEventListener("input", () => {
  showWeight();
  if (run && run.id) scheduleSteer();
});

// ---- live steering -----------------------------------------------------------------------
// A drag fires many input events: wait for a short pause, keep one request in flight and
// send only the latest value after it, so the gateway ends on the weight the user left.
let steerTimer = null;
let steerBusy = false;
let steerAgain = false;

function scheduleSteer() {
  clearTimeout(steerTimer);
  steerTimer = setTimeout(sendSteer, 80);
}

async function sendSteer() {
  if (!run || !run.id) return;
  if (steerBusy) {
    steerAgain = true;
    return;
  }
  steerBusy = true;
  const w = weight();
  try {
    const r = await steer(run.id, w);
    // null: the story finished before the request arrived; nothing to steer.
    if (r) $("steer-note").textContent = `Steered to ${percent(r.logic_weight)}% logic from token ${r.applies_from_token + 1}.`;
  } catch (e) {
    $("steer-note").textContent = `Could not steer: ${describe(e)}`;
  } finally {
    steerBusy = false;
    if (steerAgain) {
      steerAgain = false;
      sendSteer();
    }
  }
}

// ---- the form ------------------------------------------------------------------------------
const FIELDS = { prompt: "prompt", max_new_tokens: "max-tokens", temperature: "temperature", top_k: "top-k",
                 top_p: "top-p", seed: "seed", blend: "blend" };

function showError(message, field = null) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  const input = field && FIELDS[field] && $(FIELDS[field]);
  if (input) input.setAttribute("aria-invalid", "true");
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function status(text) {
  $("status").textContent = text;
}

/** The request the form describes, or null (with the problem shown) when a field is invalid. */
function readRequest() {
  for (const el of form.querySelectorAll("input, textarea, select")) {
    if (!el.checkValidity()) {
      const name = el.labels && el.labels[0] ? el.labels[0].textContent.trim().split("\n")[0] : el.name;
      showError(`${name}: ${el.validationMessage}`);
      el.setAttribute("aria-invalid", "true");
      el.focus();
      return null;
    }
  }
  let seed = $("seed").value === "" ? null : Number($("seed").value);
  if (seed !== null && !Number.isSafeInteger(seed)) {
    showError(`Seed: use a whole number up to ${Number.MAX_SAFE_INTEGER}.`, "seed");
    $("seed").focus();
    return null;
  }
  // Draw the seed here rather than on the gateway so the split view can reuse it.
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
  };
}

function setRunning(on) {
  const hadFocus = document.activeElement === stopBtn;
  generateBtn.disabled = on;
  stopBtn.disabled = !on;
  $("story-section").setAttribute("aria-busy", String(on));
  // A disabled button drops keyboard focus to <body>: hand it to the button that now works.
  if (on && document.activeElement === generateBtn) stopBtn.focus();
  if (!on && hadFocus) generateBtn.focus();
}

/** Stream one generation into a pane; resolves to "done", "stopped" or the error. Never throws. */
async function streamInto(pane, request, signal, onStart) {
  try {
    for await (const ev of generateStream(request, signal)) {
      if (ev.type === "start") {
        pane.started(ev);
        if (onStart) onStart(ev);
      } else if (ev.type === "token") {
        pane.addToken(ev);
      } else if (ev.type === "end") {
        pane.end(ev);
        return "done";
      } else if (ev.type === "error") {
        throw new ApiError(ev.status || 500, (ev.error && ev.error.message) || "the generation failed");
      }
    }
    throw new ApiError(0, "the stream ended before the story did");
  } catch (e) {
    if (e.name === "AbortError") {
      pane.stopped();
      return "stopped";
    }
    pane.fail(describe(e));
    return e;
  }
}

async function generate() {
  if (run) return;
  clearError();
  const request = readRequest();
  if (!request) return;
  const split = $("split").checked;
  $("panes").classList.toggle("split", split);
  $("steer-note").textContent = "";
  const controller = new AbortController();
  run = { controller, id: null };
  setRunning(true);
  status("Reading the prompt into both models…");

  panes.blend.begin("waiting for the models…");
  const comparisons = [];
  if (split) {
    panes.gpt2.begin("starts with the blend…");
    panes.bdh.begin("starts with the blend…");
  }

  const onStart = (ev) => {
    run.id = ev.id;
    $("story").dataset.generationId = ev.id;
    status(`Writing at ${percent(ev.logic_weight)}% logic — move the slider to steer.`);
    if (weight() !== request.logic_weight) scheduleSteer();  // moved during the prefill
    if (split) {
      // Started once the blend holds its place, so a busy gateway refuses these, not the blend.
      comparisons.push(streamInto(panes.gpt2, { ...request, logic_weight: 0 }, controller.signal));
      comparisons.push(streamInto(panes.bdh, { ...request, logic_weight: 1 }, controller.signal));
    }
  };
  const outcome = await streamInto(panes.blend, request, controller.signal, onStart);
  if (outcome === "done") status(`Done: ${panes.blend.tokenCount} tokens.`);
  else if (outcome === "stopped") status("Stopped.");
  else {
    status("The story could not be written.");
    showError(describe(outcome), outcome.field);
    panes.blend.fail(`failed${outcome.status ? ` (${outcome.status})` : ""}: see the message above`);
    if (outcome.status === 503 || outcome.status === 0) checkReadiness();
    if (outcome.status === 401) showApiKey();
  }
  if (split && comparisons.length === 0) {
    const why = outcome === "stopped" ? "stopped before it started" : "not started: the blend could not start";
    panes.gpt2.skipped(why);
    panes.bdh.skipped(why);
  }
  await Promise.all(comparisons);
  run = null;
  setRunning(false);
}

function stop() {
  if (!run) return;
  status("Stopping…");
  run.controller.abort();
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});
stopBtn.addEventListener("click", stop);

// Enter in the prompt generates (Shift+Enter for a new line); Ctrl/Cmd+Enter works anywhere
// in the form, and Esc stops from anywhere on the page.
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    form.requestSubmit();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && run) {
    e.preventDefault();
    stop();
  } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    const target = e.target.closest && e.target.closest("form");
    if (target && target !== form) return;  // the validator handles its own
    e.preventDefault();
    form.requestSubmit();
  }
});

// ---- the API key (only shown once the gateway asks for one) -------------------------------
function showApiKey() {
  $("api-key-field").hidden = false;
  $("api-key").focus();
}
$("api-key").addEventListener("change", () => {
  setApiKey($("api-key").value.trim());
  loadLimits();
});

// ---- readiness and limits ----------------------------------------------------------------
async function checkReadiness() {
  const pill = $("readiness");
  const r = await readiness();
  pill.className = `pill ${r.ready ? "pill-ok" : "pill-bad"}`;
  pill.textContent = r.ready ? "Models ready" : "Not ready";
  pill.title = r.ready ? "Both model servers answer" : r.problems.join("\n");
}

async function loadLimits() {
  const i = await info();
  if (!i) return;
  const limits = i.gateway.limits;
  const maxTokens = $("max-tokens");
  maxTokens.max = String(limits.max_new_tokens_limit);
  if (maxTokens.value === maxTokens.defaultValue) maxTokens.value = String(limits.default_max_new_tokens);
}

showWeight();
setupValidator({ storyText: () => panes.blend.text(), prompt: () => $("prompt").value });
loadLimits();
checkReadiness();
setInterval(checkReadiness, 15000);
document.documentElement.dataset.ready = "true";  // the page's scripts are wired (tests wait for this)
