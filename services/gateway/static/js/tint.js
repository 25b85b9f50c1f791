// The Colours switch: the story's tint on or off, remembered in this browser (story.js says
// what the tint marks).

import { $ } from "./page.js";

const TINT_KEY = "plotarmour.tint";

function showTint() {
  const on = $("tint").checked;
  $("panes").classList.toggle("no-tint", !on);
  $("legend").classList.toggle("tint-off", !on);
}

export function wireTint() {
  $("tint").addEventListener("change", () => {
    showTint();
    try { localStorage.setItem(TINT_KEY, $("tint").checked ? "on" : "off"); } catch { /* blocked: per page only */ }
  });
  try { if (localStorage.getItem(TINT_KEY) === "off") $("tint").checked = false; } catch { /* blocked */ }
  showTint();
}
