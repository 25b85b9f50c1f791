// The dock on a phone: out of the way in the logic check. The fixed bottom bar (the mix and
// Generate/Stop) does nothing for the logic check and covers a sixth of a phone's screen: it
// slides away while that section fills the top half of the screen and no story is being
// written (Stop and the slider stay in reach while one is), and comes back anywhere else.
// (The CSS applies it only where the dock is fixed.)

import { $, state } from "./page.js";

let inLogicCheck = false;

/** Away or back, for where the reader is and whether a story is being written. */
export function placeDock() {
  document.querySelector(".dock").classList.toggle("is-away", inLogicCheck && !state.run);
}

export function wireDock() {
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      inLogicCheck = entries[entries.length - 1].isIntersecting;  // the latest, if several came at once
      placeDock();
    }, { rootMargin: "0px 0px -50% 0px" }).observe($("validator"));
  }
}
