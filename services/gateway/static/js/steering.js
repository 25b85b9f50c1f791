// Live steering: where a drag of the slider ends, the story being written takes the new
// weight from its next word. One request in flight at a time; a value set meanwhile is sent
// after it, so the gateway ends on the weight the user left.

import { steer } from "./api.js";
import { explain } from "./errors.js";
import { weight } from "./mix.js";
import { $, state } from "./page.js";
import { status } from "./status.js";

const STEER_SETTLE_MS = 250;  // arrow keys fire a change per step: steer once they pause

let steerTimer = null;
let steerBusy = false;
let steerAgain = false;

export function scheduleSteer() {
  clearTimeout(steerTimer);
  steerTimer = setTimeout(sendSteer, STEER_SETTLE_MS);
}

async function sendSteer() {
  if (!state.run || !state.run.id) return;
  if (steerBusy) {
    steerAgain = true;
    return;
  }
  steerBusy = true;
  const w = weight();
  const thisRun = state.run;
  try {
    const r = await steer(thisRun.id, w);
    // null: the story finished before the request arrived; nothing to steer.
    if (r && state.run === thisRun) {
      thisRun.replayStopped = thisRun.replayStopped || thisRun.replaying;
      thisRun.replaying = false;
      thisRun.steering = { weight: r.logic_weight, from: r.applies_from_token };
      status();
    }
  } catch (e) {
    if (state.run === thisRun) status(`Could not steer: ${explain(e).message}`);
  } finally {
    steerBusy = false;
    if (steerAgain) {
      steerAgain = false;
      sendSteer();
    }
  }
}

export function wireSteering() {
  $("weight").addEventListener("change", () => {
    if (state.run && state.run.id) scheduleSteer();
  });
}
