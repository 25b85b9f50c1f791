// The "Your recent stories" list: this browser's history (kept by output.js) drawn as buttons,
// a story saved to it when a run ends, and an entry restored to the page when clicked.

import { replaySetup, updateOutputs } from "./actions.js";
import { blendName } from "./format.js";
import { describeWeights, forgetHistory, loadHistory, remember } from "./output.js";
import { $, inspector, motion, oneColumn, panes, state } from "./page.js";
import { applySetup } from "./setup.js";
import { clearError, status } from "./status.js";

export function renderHistory(items = loadHistory()) {
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
  if (state.run) {
    status("A story is still being written: press Stop (or Esc) first.");
    return;
  }
  applySetup(h.setup);
  clearError();
  inspector.close();
  $("panes").classList.remove("split");
  for (const pane of [panes.gpt2, panes.bdh]) pane.clear();
  panes.blend.restore(h);
  state.last = { setup: { ...h.setup, split: false }, replay: null, continued: 0, historyAt: h.at, split: false,
                 restored: true };
  updateOutputs();
  status("Restored from your history. Generate writes it again, with every word's details.");
  // In one column the story is below the history: bring it up, where the text now is.
  if (oneColumn.matches) $("story-section").scrollIntoView({ behavior: motion(), block: "start" });
}

/** The story just written (outcome: "done", "stopped" or the error), first in the list. */
export function saveToHistory(outcome) {
  const finish = outcome === "done" ? panes.blend.finishReason : outcome === "stopped" ? "stopped" : "error";
  // A continued story replaces its own entry.
  const kept = loadHistory().filter((h) => h.at !== state.last.historyAt);
  try { localStorage.setItem("plotarmour.history", JSON.stringify(kept)); } catch { /* blocked */ }
  const items = remember({ setup: replaySetup(), text: panes.blend.text(), tokens: panes.blend.tokenCount, finish,
                           weights: panes.blend.weights });
  state.last.historyAt = items[0].at;
  renderHistory(items);
}

export function wireHistory() {
  $("history-clear").addEventListener("click", () => {
    forgetHistory();
    renderHistory([]);
  });
}
