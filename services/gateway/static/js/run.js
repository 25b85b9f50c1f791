// The run: Generate, Retry and Continue write a story into the blend pane (and, side by side,
// GPT-2 alone and BDH alone from the same start and seed), token by token from the gateway's
// stream, until it ends, fails or Stop aborts it. state.run (page.js) is the run in progress,
// state.last the story it wrote.

import { updateOutputs } from "./actions.js";
import { ApiError, generateStream } from "./api.js";
import { showApiKey } from "./apikey.js";
import { placeDock } from "./dock.js";
import { percent } from "./format.js";
import { saveToHistory } from "./history.js";
import { weight } from "./mix.js";
import { $, inspector, motion, oneColumn, panes, state } from "./page.js";
import { checkReadiness } from "./readiness.js";
import { readSetup } from "./setup.js";
import { tokenArrived, watchForStalls } from "./stall.js";
import { clearError, showError, status } from "./status.js";
import { scheduleSteer } from "./steering.js";

const ALTERNATIVES = 5;  // each token's top-5 alternatives, for the inspector

const generateBtn = $("generate");
const stopBtn = $("stop");

/** One stream's request; steering (a schedule) only where given: the blend of a fresh story. */
function request(setup, prompt, logicWeight, seed, steering = []) {
  const { split, steering: _, ...rest } = setup;
  return { ...rest, prompt, logic_weight: logicWeight, seed, top_alternatives: ALTERNATIVES,
           ...(steering.length ? { steering } : {}) };
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
    if (!state.run.failure) {
      state.run.failure = e;
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
export async function generate({ setup = null, continuing = false, shared = false } = {}) {
  if (state.run) {
    // Never silently: say what the new story waits for.
    status(state.run.stopping ? "Still stopping the last story… try again in a moment."
      : "A story is still being written: press Stop (or Esc) first.");
    return;
  }
  clearError();
  inspector.close();
  if (!continuing) {
    setup = setup || readSetup();
    if (!setup) return;
    state.last = { setup, replay: null, continued: 0, historyAt: null };
  } else {
    state.last.continued += 1;
  }
  const last = state.last;
  const split = continuing ? last.split : last.setup.split;
  last.split = split;
  $("panes").classList.toggle("split", split);
  const controller = new AbortController();
  const active = split ? [panes.blend, panes.gpt2, panes.bdh] : [panes.blend];
  const run = { controller, id: null, panes: active, stalledFor: 0, stalledOn: "the models", failure: null, steering: null,
                stopping: false, ended: null, shared };
  state.run = run;
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
  state.run = null;
  setRunning(false);
  if (panes.blend.hasStory) saveToHistory(outcome);
}

/** Stop every stream of the run; its end (in generate) writes the closing status. */
export function stop() {
  const run = state.run;
  if (!run || run.stopping) return;
  run.stopping = true;
  status(run.ended ? `${run.ended} Stopping the side panes…` : "Stopping…");
  run.controller.abort();
}

export function wireRun() {
  $("generate-form").addEventListener("submit", (e) => {
    e.preventDefault();
    generate();
  });
  stopBtn.addEventListener("click", stop);
  $("retry").addEventListener("click", () => state.last && generate({ setup: state.last.setup }));
  $("continue").addEventListener("click", () => state.last && generate({ continuing: true }));
  $("error-continue").addEventListener("click", () => state.last && generate({ continuing: true }));
}
