// A share link opened (at load, or pasted into this tab's address): its setup fills the form and
// the story is written again at once, with the same seed, settings and steering. Two cases
// only fill the form: a story is being written here already, or this is the author's own tab
// reloaded (Share, in actions.js, noted the link it put in the address).

import { readShareLink } from "./output.js";
import { state } from "./page.js";
import { generate } from "./run.js";
import { applySetup } from "./setup.js";
import { status } from "./status.js";

export function openShareLink() {
  const shared = readShareLink(location.hash);
  if (!shared) return;
  if (state.run) {  // the link changed under a story being written: leave that one alone
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

export function wireShareLinks() {
  window.addEventListener("hashchange", openShareLink);
}
