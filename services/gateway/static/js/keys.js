// The keyboard. Enter in the prompt generates (Shift+Enter for a new line) on a keyboard; on a
// touch screen Enter adds a line, and the hints say to tap Generate. Ctrl/Cmd+Enter works
// anywhere in the form, and Esc closes the word's details or stops.

import { $, inspector, state, touch } from "./page.js";
import { stop } from "./run.js";

export function wireKeys() {
  const form = $("generate-form");
  document.documentElement.classList.toggle("touch", touch);
  if (touch) $("prompt").setAttribute("enterkeyhint", "enter");
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
    } else if (e.key === "Escape" && state.run) {
      e.preventDefault();
      stop();
    } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      const target = e.target.closest && e.target.closest("form");
      if (target && target !== form) return;  // the logic check handles its own
      e.preventDefault();
      form.requestSubmit();
    }
  });
}
