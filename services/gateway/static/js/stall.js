// Stalls: when no word has come for STALL_MS, the status line and the waiting panes say so,
// then name the model the gateway is waiting for; the next word clears it.

import { waitingFor } from "./api.js";
import { $, state } from "./page.js";
import { checkReadiness } from "./readiness.js";
import { words } from "./roles.js";
import { status } from "./status.js";

const STALL_MS = 2000;  // no token for this long: say what the story waits for

/** Start watching the run that has just begun (generate clears run.stallTimer at its end). */
export function watchForStalls() {
  state.run.lastTokenAt = performance.now();
  state.run.stallTimer = setInterval(() => {
    const run = state.run;
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

function showStall() {
  const run = state.run;
  for (const p of run.panes) if (p.root.dataset.state === "streaming" || p.root.dataset.state === "waiting") {
    p.stall(`waiting for ${run.stalledOn}…`);
  }
}

// Every live story steps together, so the gateway knows which server's answer is late.
async function nameTheStall(thisRun, stall) {
  const late = thisRun.id ? await waitingFor(thisRun.id) : null;
  // Only for this stall of this run, while it lasts (an answer may come after the tokens did).
  if (state.run !== thisRun || thisRun.ended || thisRun.stalls !== stall || !thisRun.stalledFor) return;
  if (!late || !late.length) return;
  thisRun.stalledOn = late.length === 1 ? words(late[0]) : "both models";
  showStall();
  status();
}

/** A word came: the stall, if any, is over. */
export function tokenArrived() {
  const run = state.run;
  if (!run) return;
  run.lastTokenAt = performance.now();
  if (run.stalledFor) {
    run.stalledFor = 0;
    for (const p of run.panes) p.stall(null);
    if (!$("readiness").classList.contains("pill-ok")) checkReadiness();
  }
}
