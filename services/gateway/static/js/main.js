// The story page: wires the form, the mix slider, the three story panes, live steering, the
// token inspector, the output buttons and the logic check to the gateway's API. No
// framework and no build step.

import { ApiError, generateStream, info, readiness, setApiKey, steer, waitingFor } from "./api.js";
import { explain } from "./errors.js";
import { BLEND_LABELS, blendName, percent } from "./format.js";
import { Inspector } from "./inspector.js";
import { MAX_STEERING, copyText, describeWeights, download, forgetHistory, loadHistory, markdown, readShareLink, remember,
         shareLink } from "./output.js";
import { DEFAULT_PRESET, PRESETS } from "./presets.js";
import { StoryPane } from "./story.js";
import { setupValidator } from "./validator.js";

const $ = (id) => document.getElementById(id);
const form = $("generate-form");
const slider = $("weight");
const generateBtn = $("generate");
const stopBtn = $("stop");
const panes = {
  blend: new StoryPane($("pane-blend"), { badge: $("blend-badge"), strip: { figure: $("strip"), svg: $("strip-svg") } }),
  gpt2: new StoryPane($("pane-gpt2"), { tint: false }),
  bdh: new StoryPane($("pane-bdh"), { tint: false }),
};
const inspector = new Inspector(Object.values(panes));

const ALTERNATIVES = 5;       // each token's top-5 alternatives, for the inspector
const STALL_MS = 2000;        // no token for this long: say what the story waits for
const STEER_SETTLE_MS = 250;  // arrow keys fire a change per step: steer once they pause

// The generation in progress: its AbortController (Stop aborts every stream of it: the
// gateway ends a generation whose client left and frees both servers' sessions), the id
// that live steering addresses, when its last token came, its first failure, whether Stop
// was pressed, and the blend's closing status once the blend has ended (the side panes of
// the split view may still be writing: the run lasts until they end too).
let run = null;
// The last story written: its setup (what was sent), the weight schedule its token events
// carried (replay: what writes it again, steering included), whether it had the side panes,
// how often it was continued, and its history entry.
let last = null;
// A steered story restored from a share link or the history: Generate sends its schedule,
// as long as the slider still starts where it did ({logic_weight, steering}, or null).
let replay = null;

// On a phone or tablet there is no Shift key to add a line: Enter adds one, a button generates.
const touch = matchMedia("(pointer: coarse)").matches
  || (navigator.maxTouchPoints > 0 && matchMedia("(hover: none)").matches);
document.documentElement.classList.toggle("touch", touch);
if (touch) $("prompt").setAttribute("enterkeyhint", "enter");

// ---- the mix slider ----------------------------------------------------------------------
function weight() {
  return Number(slider.value) / 100;  // 70 -> 0.7, the same double as Python's 0.7
}

function showWeight() {
  const pct = Number(slider.value);
  $("weight-pct").textContent = `${pct}%`;
  slider.setAttribute("aria-valuetext", `${pct}% Logic (BDH), ${100 - pct}% Creativity (GPT-2)`);
  slider.style.setProperty("--pct", `${pct}%`);
  // Before any story the badge previews the slider; after, it belongs to the story.
  if (!panes.blend.weights.length) $("blend-badge").textContent = `${pct}% logic`;
  markPreset();
}

/** The restored story's steering that Generate will replay (null: none), shown under the slider. */
function setReplay(setup) {
  replay = setup && setup.steering && setup.steering.length
    ? { logic_weight: setup.logic_weight, steering: setup.steering } : null;
  const el = $("replay-note");
  el.hidden = !replay;
  el.textContent = replay ? `Generate replays this story's steering: ${describeWeights(replay.logic_weight, replay.steering)}. `
    + "Move the slider to start from your own weight instead." : "";
}

// Dragging only moves the label; the story is steered once, where the drag ends (change).
slider.addEventListener("input", () => {
  if (replay) setReplay(null);  // the reader picks their own weight: no replay
  showWeight();
  if (run && run.id) status();
});
slider.addEventListener("change", () => {
  if (run && run.id) scheduleSteer();
});

// ---- live steering -----------------------------------------------------------------------
// One request in flight at a time; a value set meanwhile is sent after it, so the gateway
// ends on the weight the user left.
let steerTimer = null;
let steerBusy = false;
let steerAgain = false;

function scheduleSteer() {
  clearTimeout(steerTimer);
  steerTimer = setTimeout(sendSteer, STEER_SETTLE_MS);
}

async function sendSteer() {
  if (!run || !run.id) return;
  if (steerBusy) {
    steerAgain = true;
    return;
  }
  steerBusy = true;
  const w = weight();
  const thisRun = run;
  try {
    const r = await steer(thisRun.id, w);
    // null: the story finished before the request arrived; nothing to steer.
    if (r && run === thisRun) {
      thisRun.replayStopped = thisRun.replayStopped || thisRun.replaying;
      thisRun.replaying = false;
      thisRun.steering = { weight: r.logic_weight, from: r.applies_from_token };
      status();
    }
  } catch (e) {
    if (run === thisRun) status(`Could not steer: ${explain(e).message}`);
  } finally {
    steerBusy = false;
    if (steerAgain) {
      steerAgain = false;
      sendSteer();
    }
  }
}

// ---- status, stalls and the one error message ------------------------------------------------
/** The status line: the weight in effect while a story is written, or a given message. */
function status(text) {
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

function watchForStalls() {
  run.lastTokenAt = performance.now();
  run.stallTimer = setInterval(() => {
    if (!run) return;
    const quiet = performance.now() - run.lastTokenAt;
    if (quiet < STALL_MS) return;
    const first = !run.stalledFor;
    run.stalledFor = Math.floor(quiet / 1000);
    if (first) {
      run.stalledOn = "the models";  // until the gateway says which
      run.stalls = (run.stalls || 0) + 1;
      showStall();
      nameTheStall(run, run.stalls);
      checkReadiness();  // a stalled model is often a dead one: the badge should know at once
    }
    status();
  }, 500);
}

// Every live story steps together, so the gateway knows which server's answer is late.
const WAITED_FOR = { gpt2: "the creativity model (GPT-2)", bdh: "the logic model (BDH)" };

function showStall() {
  for (const p of run.panes) if (p.root.dataset.state === "streaming" || p.root.dataset.state === "waiting") {
    p.stall(`waiting for ${run.stalledOn}…`);
  }
}

async function nameTheStall(thisRun, stall) {
  const late = thisRun.id ? await waitingFor(thisRun.id) : null;
  // Only for this stall of this run, while it lasts (an answer may come after the tokens did).
  if (run !== thisRun || thisRun.ended || thisRun.stalls !== stall || !thisRun.stalledFor) return;
  if (!late || !late.length) return;
  thisRun.stalledOn = late.length === 1 ? WAITED_FOR[late[0]] || late[0] : "both models";
  showStall();
  status();
}

function tokenArrived() {
  if (!run) return;
  run.lastTokenAt = performance.now();
  if (run.stalledFor) {
    run.stalledFor = 0;
    for (const p of run.panes) p.stall(null);
    if (!$("readiness").classList.contains("pill-ok")) checkReadiness();
  }
}

const FIELDS = { prompt: "prompt", max_new_tokens: "max-tokens", temperature: "temperature", top_k: "top-k",
                 top_p: "top-p", seed: "seed", blend: "blend" };

function showError(err, { retry = true, pane = null } = {}) {
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

const oneColumn = matchMedia("(max-width: 860px)");
const motion = () => (matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth");

function clearError() {
  $("error").hidden = true;
  $("error-message").textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

// ---- the form ------------------------------------------------------------------------------
/** The setup the form describes, or null (with the problem shown) when a field is invalid. */
function readSetup() {
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
    steering: replay && percent(replay.logic_weight) === percent(weight()) ? replay.steering.slice(0, MAX_STEERING) : [],
  };
}

/** Fill the form from a setup (a share link, a history entry); missing fields stay as they are. */
function applySetup(setup) {
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

/** One stream's request; steering (a schedule) only where given: the blend of a fresh story. */
function request(setup, prompt, logicWeight, seed, steering = []) {
  const { split, steering: _, ...rest } = setup;
  return { ...rest, prompt, logic_weight: logicWeight, seed, top_alternatives: ALTERNATIVES,
           ...(steering.length ? { steering } : {}) };
}

/** The setup that writes the last story again: its start weight and steering as its tokens
 *  were drawn (live steering included), not as the form was when Generate was pressed, and
 *  a story stopped by hand only as far as it went (the same seed writes the same first words). */
function replaySetup() {
  const setup = last.replay ? { ...last.setup, ...last.replay } : { ...last.setup };
  if (panes.blend.finishReason === "stopped" && !last.continued && !last.restored && panes.blend.tokenCount) {
    setup.max_new_tokens = panes.blend.tokenCount;
  }
  return setup;
}

function setRunning(on) {
  const hadFocus = document.activeElement === stopBtn;
  generateBtn.disabled = on;
  stopBtn.disabled = !on;
  $("story-section").setAttribute("aria-busy", String(on));
  // A disabled button drops keyboard focus to <body>: hand it to the button that now works.
  if (on && document.activeElement === generateBtn) stopBtn.focus();
  if (!on && hadFocus) generateBtn.focus();
  updateOutputs();
  placeDock();
}

/** Stream one generation into a pane; resolves to "done", "stopped" or the error. Never throws. */
async function streamInto(pane, req, signal, onStart) {
  let started = false;
  try {
    for await (const ev of generateStream(req, signal)) {
      if (ev.type === "start") {
        started = true;
        pane.started(ev, req.max_new_tokens);
        if (onStart) onStart(ev);
      } else if (ev.type === "token") {
        pane.addToken(ev);
        if (pane === panes.blend) {
          tokenArrived();
          status();
        }
      } else if (ev.type === "end") {
        pane.end(ev);
        return "done";
      } else if (ev.type === "error") {
        throw new ApiError(ev.status || 500, (ev.error && ev.error.message) || "the generation failed",
                           ev.error && ev.error.param, { code: ev.error && ev.error.code, midStream: true });
      }
    }
    throw new ApiError(0, "the stream ended before the story did", null, { midStream: started });
  } catch (e) {
    if (e.name === "AbortError") {
      pane.stopped();
      return "stopped";
    }
    // One failure, one message: the first goes above the story, the panes only say they stopped.
    if (!run.failure) {
      run.failure = e;
      showError(e, { pane: pane === panes.blend ? null : pane === panes.gpt2 ? "GPT-2 alone" : "BDH alone" });
      checkReadiness();  // the badge learns of a dead model at once, not at its next poll
      if (e.status === 401) showApiKey();
    }
    // A story that never started did not stop early: say which it was.
    pane.fail(!started ? "could not start" : `stopped early${pane.tokenCount ? ` after ${pane.tokenCount} word pieces` : ""}`);
    return e;
  }
}

/** Write a story: fresh from the form (setup given: Retry), or on from where it stopped
 *  (Continue); shared: the form holds a share link's story, written again as it opens. */
async function generate({ setup = null, continuing = false, shared = false } = {}) {
  if (run) {
    // Never silently: say what the new story waits for.
    status(run.stopping ? "Still stopping the last story… try again in a moment."
      : "A story is still being written: press Stop (or Esc) first.");
    return;
  }
  clearError();
  inspector.close();
  if (!continuing) {
    setup = setup || readSetup();
    if (!setup) return;
    last = { setup, replay: null, continued: 0, historyAt: null };
  } else {
    last.continued += 1;
  }
  const split = continuing ? last.split : last.setup.split;
  last.split = split;
  $("panes").classList.toggle("split", split);
  const controller = new AbortController();
  const active = split ? [panes.blend, panes.gpt2, panes.bdh] : [panes.blend];
  run = { controller, id: null, panes: active, stalledFor: 0, stalledOn: "the models", failure: null, steering: null, stopping: false,
          ended: null, shared };
  setRunning(true);
  status(continuing ? "Reading the story so far into the models…" : "Reading the start of the story into the models…");

  const s = last.setup;
  // Continue: a new generation whose prompt is the prompt plus what each pane wrote, at the
  // weight the slider shows now, with a seed derived from the story's.
  const seed = continuing ? (s.seed + last.continued) % 2 ** 53 : s.seed;
  const w = continuing ? weight() : s.logic_weight;
  const promptOf = (pane) => (continuing ? s.prompt + pane.text() : s.prompt);
  for (const pane of active) {
    const label = pane === panes.blend ? "waiting for the models…" : "starts with the blend…";
    if (continuing) pane.resume(label, s.max_new_tokens);
    else pane.begin(s.prompt, label);
  }
  if (!split) for (const pane of [panes.gpt2, panes.bdh]) pane.clear();
  updateOutputs();  // the panes hold no finished story now: nothing to download or share yet
  // In one column the story is below the form: bring it up, where the words will come.
  if (oneColumn.matches && !continuing) $("story-section").scrollIntoView({ behavior: motion(), block: "start" });
  watchForStalls();

  const comparisons = [];
  const onStart = (ev) => {
    run.id = ev.id;
    $("story").dataset.generationId = ev.id;
    status();
    if (weight() !== w) scheduleSteer();  // moved during the prefill
    if (split) {
      // Started once the blend holds its place, so a busy gateway refuses these, not the blend.
      comparisons.push(streamInto(panes.gpt2, request(s, promptOf(panes.gpt2), 0, seed), controller.signal));
      comparisons.push(streamInto(panes.bdh, request(s, promptOf(panes.bdh), 1, seed), controller.signal));
    }
  };
  const steering = continuing ? [] : s.steering || [];
  run.replaying = steering.length > 0 || shared;  // a live steer ends the replay (the gateway drops the rest)
  const outcome = await streamInto(panes.blend, request(s, promptOf(panes.blend), w, seed, steering), controller.signal,
                                   onStart);
  clearInterval(run.stallTimer);
  // What writes this story again: the weights its tokens were drawn at (a Continue is a new
  // generation from the story so far: the replay stays the first part's).
  if (!continuing && panes.blend.schedule) last.replay = { ...panes.blend.schedule };
  if (outcome === "done") {
    run.ended = `${shared ? "The shared story, written again" : "Done"}: ${panes.blend.tokenCount} word pieces, `
      + `ending at ${percent(panes.blend.lastWeight)}% logic.`;
  }
  else if (outcome === "stopped") run.ended = "Stopped.";
  else run.ended = panes.blend.hasStory ? "The story stopped early." : "The story could not be written.";
  status(run.ended);
  if (split && comparisons.length === 0) {
    const why = outcome === "stopped" ? "stopped before it started" : "not started: the blend could not start";
    panes.gpt2.skipped(why);
    panes.bdh.skipped(why);
  }
  const sides = await Promise.all(comparisons);
  // Stopped after the blend had ended: its "Done…" stays, and says that the side panes were stopped.
  if (run.stopping && outcome !== "stopped") {
    status(sides.includes("stopped") ? `${run.ended} Stopped the side panes.` : run.ended);
  }
  run = null;
  setRunning(false);
  if (panes.blend.hasStory) saveToHistory(outcome);
}

/** Stop every stream of the run; its end (in generate) writes the closing status. */
function stop() {
  if (!run || run.stopping) return;
  run.stopping = true;
  status(run.ended ? `${run.ended} Stopping the side panes…` : "Stopping…");
  run.controller.abort();
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});
stopBtn.addEventListener("click", stop);
$("retry").addEventListener("click", () => last && generate({ setup: last.setup }));
$("continue").addEventListener("click", () => last && generate({ continuing: true }));
$("error-continue").addEventListener("click", () => last && generate({ continuing: true }));

// Enter in the prompt generates (Shift+Enter for a new line) on a keyboard; on a touch screen
// Enter adds a line. Ctrl/Cmd+Enter works anywhere in the form, and Esc closes the word's
// details or stops.
$("prompt").addEventListener("keydown", (e) => {
  if (!touch && e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    form.requestSubmit();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && inspector.isOpen) {
    e.preventDefault();
    inspector.close(true);
  } else if (e.key === "Escape" && run) {
    e.preventDefault();
    stop();
  } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    const target = e.target.closest && e.target.closest("form");
    if (target && target !== form) return;  // the logic check handles its own
    e.preventDefault();
    form.requestSubmit();
  }
});

// ---- examples and presets --------------------------------------------------------------------
function markPreset() {
  for (const b of document.querySelectorAll("[data-preset]")) {
    const p = PRESETS[b.dataset.preset];
    const on = percent(p.logic_weight) === Number(slider.value) && p.temperature === Number($("temperature").value)
      && p.top_k === Number($("top-k").value) && p.top_p === Number($("top-p").value);
    b.setAttribute("aria-pressed", String(on));
  }
}

for (const b of document.querySelectorAll("[data-preset]")) {
  b.addEventListener("click", () => {
    applySetup(PRESETS[b.dataset.preset]);
    if (run && run.id) scheduleSteer();
  });
}
for (const id of ["temperature", "top-k", "top-p"]) $(id).addEventListener("input", markPreset);
for (const b of document.querySelectorAll("[data-example]")) {
  b.addEventListener("click", () => {
    $("prompt").value = b.dataset.example;
    if (!touch) $("prompt").focus();  // (a phone would open its keyboard over the page)
  });
}

// ---- the blend menu in a storyteller's words -------------------------------------------------------
// The gateway fills the menu from its registry, with the formulas as hover text; the page only
// relabels the choices it knows (the values sent stay the registry's names; an unknown one
// keeps the server's label).
for (const option of $("blend").options) {
  const label = BLEND_LABELS[option.value];
  if (label) [option.textContent, option.title] = label;
}

// ---- the dock on a phone: out of the way in the logic check ----------------------------------------
// The fixed bottom bar (the mix and Generate/Stop) does nothing for the logic check and covers
// a sixth of a phone's screen: it slides away while that section fills the top half of the
// screen and no story is being written (Stop and the slider stay in reach while one is), and
// comes back anywhere else. (The CSS applies it only where the dock is fixed.)
let inLogicCheck = false;
function placeDock() {
  document.querySelector(".dock").classList.toggle("is-away", inLogicCheck && !run);
}
if ("IntersectionObserver" in window) {
  new IntersectionObserver((entries) => {
    inLogicCheck = entries[entries.length - 1].isIntersecting;  // the latest, if several came at once
    placeDock();
  }, { rootMargin: "0px 0px -50% 0px" }).observe($("validator"));
}

// ---- tinting -------------------------------------------------------------------------------------
const TINT_KEY = "plotarmour.tint";
function showTint() {
  const on = $("tint").checked;
  $("panes").classList.toggle("no-tint", !on);
  $("legend").classList.toggle("tint-off", !on);
}
$("tint").addEventListener("change", () => {
  showTint();
  try { localStorage.setItem(TINT_KEY, $("tint").checked ? "on" : "off"); } catch { /* blocked: per page only */ }
});
try { if (localStorage.getItem(TINT_KEY) === "off") $("tint").checked = false; } catch { /* blocked */ }
showTint();

// ---- output: copy, download, share, history ----------------------------------------------------
function updateOutputs() {
  const has = panes.blend.hasStory && last;
  $("copy").disabled = !has;
  $("download").disabled = !has;
  $("share").disabled = !has;
  $("continue").disabled = !has || Boolean(run);
  $("error-continue").disabled = Boolean(run);
  $("retry").disabled = Boolean(run);
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
                    link: shareLink(setup), continued: last.continued });
}

$("copy").addEventListener("click", async () => {
  const ok = await copyText(last.setup.prompt + panes.blend.text());
  note(ok ? "Copied the story." : "This browser would not copy: select the text instead.");
});
$("download").addEventListener("click", () => {
  download(`plotarmour-story-${last.setup.seed}.md`, storyMarkdown());
  note("Downloaded the story with its settings.");
});
$("share").addEventListener("click", async () => {
  const setup = replaySetup();
  const link = shareLink(setup);
  history.replaceState(null, "", link);
  // This tab now holds the link in its address: reloading it should not write the story again.
  try { sessionStorage.setItem("plotarmour.sharedHere", link); } catch { /* blocked: it replays */ }
  const ok = await copyText(link);
  const steered = setup.steering && setup.steering.length;
  // The gateway replays at most MAX_STEERING changes of weight: say so rather than differ silently.
  const cut = steered > MAX_STEERING ? ` It replays the first ${MAX_STEERING} moves of the slider only.` : "";
  note((ok ? `Copied a link: it writes this story again, with the same start, settings, seed${steered ? " and steering" : ""}.`
    : "The link is in the address bar: copy it from there.") + cut);
});

function renderHistory(items = loadHistory()) {
  $("history-count").textContent = items.length ? `(${items.length})` : "";
  $("history-clear").hidden = !items.length;
  const list = $("history-list");
  if (!items.length) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "hint", textContent: "None yet." }));
    return;
  }
  list.replaceChildren(...items.map((h) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "history-item";
    const when = new Date(h.at).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
    const differs = differences(h, items);
    // Entries of one opening would read alike: after a short opening, their own words.
    const snippet = (differs ? `${clip(h.setup.prompt, 40)} → ${h.text}` : h.setup.prompt + h.text).replace(/\s+/g, " ").trim();
    b.textContent = clip(snippet, 110);
    const meta = document.createElement("span");
    meta.className = "history-meta";
    meta.textContent = [when, describeWeights(h.setup.logic_weight, h.setup.steering, { short: true }),
                        `seed ${h.setup.seed}`, ...(differs || [])].join(" · ");
    b.append(meta);
    b.addEventListener("click", () => restore(h));
    li.append(b);
    return li;
  }));
}

function clip(text, n) {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > n ? `${flat.slice(0, n)}…` : flat;
}

// The settings a history line names when they tell apart entries of the same opening.
const TELLS = [["temperature", "temperature"], ["top_p", "top-p"], ["top_k", "top-k"],
               ["max_new_tokens", "up to", " word pieces"], ["blend", "blend"]];

/** How h differs from the other entries with its opening (null when none has it): the
 *  settings, besides the weights and the seed, in which some of them differ. */
function differences(h, items) {
  const twins = items.filter((o) => o !== h && o.setup.prompt === h.setup.prompt);
  if (!twins.length) return null;
  return TELLS.filter(([key]) => twins.some((o) => o.setup[key] !== h.setup[key]))
    .map(([key, label, unit = ""]) => (key === "blend" ? blendName(h.setup.blend).toLowerCase()
      : key === "top_k" && !h.setup.top_k ? "no top-k" : `${label} ${h.setup[key]}${unit}`));
}

/** A history entry back on the page: its settings in the form and its text in the story pane,
 *  as this browser kept it (Generate writes it again, word by word, with the inspector). */
function restore(h) {
  if (run) {
    status("A story is still being written: press Stop (or Esc) first.");
    return;
  }
  applySetup(h.setup);
  clearError();
  inspector.close();
  $("panes").classList.remove("split");
  for (const pane of [panes.gpt2, panes.bdh]) pane.clear();
  panes.blend.restore(h);
  last = { setup: { ...h.setup, split: false }, replay: null, continued: 0, historyAt: h.at, split: false,
           restored: true };
  updateOutputs();
  status("Restored from your history. Generate writes it again, with every word's details.");
  // In one column the story is below the history: bring it up, where the text now is.
  if (oneColumn.matches) $("story-section").scrollIntoView({ behavior: motion(), block: "start" });
}

function saveToHistory(outcome) {
  const finish = outcome === "done" ? panes.blend.finishReason : outcome === "stopped" ? "stopped" : "error";
  // A continued story replaces its own entry.
  const kept = loadHistory().filter((h) => h.at !== last.historyAt);
  try { localStorage.setItem("plotarmour.history", JSON.stringify(kept)); } catch { /* blocked */ }
  const items = remember({ setup: replaySetup(), text: panes.blend.text(), tokens: panes.blend.tokenCount, finish,
                           weights: panes.blend.weights });
  last.historyAt = items[0].at;
  renderHistory(items);
}

$("history-clear").addEventListener("click", () => {
  forgetHistory();
  renderHistory([]);
});

// ---- the API key (only shown once the gateway asks for one) -------------------------------
function showApiKey() {
  $("settings").open = true;
  $("api-key-field").hidden = false;
  $("api-key").focus();
}
$("api-key").addEventListener("change", () => {
  setApiKey($("api-key").value.trim());
  loadLimits();
  checkReadiness();
});

// ---- readiness and limits ----------------------------------------------------------------
let readinessAsked = 0;
async function checkReadiness() {
  const pill = $("readiness");
  const asked = ++readinessAsked;
  const r = await readiness();
  if (asked !== readinessAsked) return;  // a later check already answered
  pill.className = `pill ${r.ready ? "pill-ok" : "pill-bad"}`;
  pill.textContent = r.ready ? "Models ready" : "A model is not answering";
  pill.title = r.ready ? "Both model servers answer" : (r.problems.length ? r.problems.join("\n") : "See /ready");
}

async function loadLimits() {
  const i = await info();
  if (!i) return;
  const limits = i.gateway.limits;
  const maxTokens = $("max-tokens");
  maxTokens.max = String(limits.max_new_tokens_limit);
  if (maxTokens.value === maxTokens.defaultValue && !location.hash) maxTokens.value = String(limits.default_max_new_tokens);
}

// ---- start: a share link restores its setup ------------------------------------------------------
function openShareLink() {
  const shared = readShareLink(location.hash);
  if (!shared) return;
  if (run) {  // the link changed under a story being written: leave that one alone
    applySetup(shared);
    status("Opened a shared story: press Stop, then Generate to write it.");
    return;
  }
  let mine = null;
  try { mine = sessionStorage.getItem("plotarmour.sharedHere"); } catch { /* blocked */ }
  if (mine === location.href) {  // the author's own tab, reloaded: the settings, not a new run
    applySetup(shared);
    status("This is the link you shared: press Generate to write the story again.");
    return;
  }
  applySetup(shared);
  generate({ shared: true });  // the same seed and settings (and steering) write the same story
}
window.addEventListener("hashchange", openShareLink);

// The page starts at the default preset, shown as selected; a share link (below) replaces it.
const start = PRESETS[DEFAULT_PRESET];
slider.value = String(percent(start.logic_weight));
for (const [id, key] of [["temperature", "temperature"], ["top-k", "top_k"], ["top-p", "top_p"]]) {
  $(id).value = String(start[key]);
}
showWeight();
setupValidator({ storyText: () => panes.blend.text(), prompt: () => (last ? last.setup.prompt : $("prompt").value) });
renderHistory();
openShareLink();
updateOutputs();
loadLimits();
checkReadiness();
setInterval(checkReadiness, 10000);
document.documentElement.dataset.ready = "true";  // the page's scripts are wired (tests wait for this)
