// The logic check panel: sends context + draft to /validate and shows the draft as a
// per-word heatmap (how much the context lowers each word's probability), the flagged
// words marked, and for each its reason and what each model expected instead. Each mark
// is focusable and points at its reason, for keyboard and screen-reader users.

import { validate } from "./api.js";
import { explain } from "./errors.js";
import { formatProb, visible } from "./format.js";
import { FAMILIES } from "./roles.js";

const $ = (id) => document.getElementById(id);

// A word's score is in bits (how much less likely the context makes it, with its surprisal
// mixed in), comparable between drafts: the heat is absolute, full at 8 bits, so the same
// word looks as hot whatever the sensitivity (which only moves the flag bar).
const FULL_HEAT_BITS = 8;
// With no flag, words at least half as hot as the scale (4 bits) still stand out in the heatmap:
// the verdict names them instead of a green all-clear, so the words and the colours agree.
export const WARM_HEAT = 0.5;
const WARM_SHOWN = 3;

/** Heat in [0, 1] per word; words the context makes likelier stay cold. */
export function heats(words) {
  return words.map((w) => Math.max(0, Math.min(1, w.score / FULL_HEAT_BITS)));
}

/** The hottest words at or above WARM_HEAT (hottest first, at most WARM_SHOWN), quoted. */
export function warmest(words, draft) {
  const heat = heats(words);
  return words.map((w, i) => [heat[i], w]).filter(([h, w]) => h >= WARM_HEAT && !w.punctuation)
    .sort((a, b) => b[0] - a[0]).slice(0, WARM_SHOWN)
    .map(([, w]) => `“${draft.slice(w.start, w.end).trim()}”`);
}

/** The draft as text, word spans (heat) and <mark>s (contradictions); offsets index the draft. */
export function renderDraft(container, draft, words, contradictions) {
  container.replaceChildren();
  const heat = heats(words);
  const cuts = new Set([0, draft.length]);
  for (const x of [...words, ...contradictions]) cuts.add(x.start).add(x.end);
  const points = [...cuts].filter((p) => p >= 0 && p <= draft.length).sort((a, b) => a - b);
  let mark = null;
  let markOf = null;
  for (let i = 0; i + 1 < points.length; i++) {
    const [a, b] = [points[i], points[i + 1]];
    const ci = contradictions.findIndex((c) => c.start <= a && b <= c.end);
    const wi = words.findIndex((w) => w.start <= a && b <= w.end);
    let node;
    if (wi >= 0) {
      const w = words[wi];
      node = document.createElement("span");
      node.className = "w";
      node.style.setProperty("--h", heat[wi].toFixed(3));
      node.dataset.score = String(w.score);
      node.dataset.heat = heat[wi].toFixed(3);
      node.title = wordTitle(w);
      node.textContent = draft.slice(a, b);
    } else {
      node = document.createTextNode(draft.slice(a, b));
    }
    if (ci >= 0) {
      if (markOf !== ci) {
        mark = document.createElement("mark");
        mark.className = "flag";
        mark.tabIndex = 0;  // reachable by keyboard, so its reason is too
        mark.setAttribute("aria-describedby", `v-reason-${ci}`);
        mark.dataset.start = contradictions[ci].start;
        mark.dataset.end = contradictions[ci].end;
        container.append(mark);
        markOf = ci;
      }
      mark.append(node);
    } else {
      markOf = null;
      container.append(node);
    }
  }
}

function wordTitle(w) {
  const bits = (o) => (o ? FAMILIES.map(([k, n]) => `${n} ${Number(o[k]).toFixed(1)}`).join(", ") : "");
  const parts = [`score ${Number(w.score).toFixed(1)} bits${w.flagged ? " (flagged)" : ""}`];
  if (w.context_bits) parts.push(`the context changes its log-probability by (bits) ${bits(w.context_bits)}`);
  if (w.surprisal_bits) parts.push(`surprisal (bits) ${bits(w.surprisal_bits)}`);
  return parts.join(" · ");
}

/** The draft score in plain words: it is in bits per word (each word's drop under the context
 *  mixed with its surprisal, averaged), with no fixed scale, so say what it compares with. */
export function scoreWords(score) {
  return `Draft score: ${score.toFixed(2)}: how much the context makes the draft's words unexpected `
    + "(0: not at all). Compare drafts for the same context: higher fits it less.";
}

function renderReasons(list, contradictions) {
  list.replaceChildren(...contradictions.map((c, i) => {
    const li = document.createElement("li");
    li.id = `v-reason-${i}`;
    const quote = document.createElement("q");
    quote.textContent = c.text.trim();
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = ` — ${c.reason}`;
    li.append(quote, reason);
    const expected = c.expected || {};
    const dl = document.createElement("dl");
    dl.className = "expected";
    for (const [key, name] of FAMILIES) {
      const alts = expected[key] || [];
      if (!alts.length) continue;
      const dt = document.createElement("dt");
      dt.textContent = `${name} expected`;
      const dd = document.createElement("dd");
      dd.textContent = alts.slice(0, 5).map((a) => `${visible(a.text)} ${formatProb(a.p)}`).join(" · ");
      dl.append(dt, dd);
    }
    if (dl.childElementCount) li.append(dl);
    return li;
  }));
}

export function setupValidator({ storyText, prompt }) {
  const form = $("validate-form");
  const button = $("validate");
  const sensitivity = $("v-sensitivity");
  const showSensitivity = () => {
    $("v-sensitivity-out").textContent = Number(sensitivity.value).toFixed(2);
    sensitivity.style.setProperty("--pct", `${Number(sensitivity.value) * 100}%`);  // the track's fill
  };
  sensitivity.addEventListener("input", showSensitivity);
  showSensitivity();

  async function run() {
    const box = $("v-error");
    box.hidden = true;
    for (const el of form.querySelectorAll("textarea, input")) {
      if (!el.checkValidity()) {
        box.textContent = `${el.id === "v-sensitivity" ? "Sensitivity" : "Draft"}: ${el.validationMessage}`;
        box.hidden = false;
        el.focus();
        return;
      }
    }
    const draft = $("v-draft").value;
    const context = $("v-context").value;
    // Context and draft are one text in two boxes: when neither side has a space at the seam,
    // send the draft with one (as the story would read), and shift the offsets back.
    const sep = context && !/\s$/.test(context) && !/^\s/.test(draft) ? " " : "";
    const back = (x) => ({ ...x, start: Math.max(0, x.start - sep.length), end: Math.max(0, x.end - sep.length) });
    button.disabled = true;
    button.textContent = "Checking…";
    try {
      const r = await validate({ context, draft: sep + draft, sensitivity: Number(sensitivity.value) });
      const words = (r.words || []).map(back).filter((w) => w.end > w.start).sort((a, b) => a.start - b.start);
      const found = (r.contradictions || []).map(back).filter((c) => c.end > c.start).sort((a, b) => a.start - b.start);
      const verdict = $("v-verdict");
      const warm = found.length ? [] : warmest(words, draft);
      verdict.className = `verdict ${found.length ? "flagged" : warm.length ? "notice" : "ok"}`;
      verdict.textContent = found.length
        ? `${found.length === 1 ? "One place stands out" : `${found.length} places stand out`}.`
        : warm.length
          ? `Nothing crosses the bar, but the heatmap shows what fits the context least: ${warm.join(", ")}.`
          : "Nothing stands out.";
      // The score in plain ink under the verdict: an explanation, not part of the alarm.
      if (typeof r.score === "number") {
        verdict.append(Object.assign(document.createElement("span"), { className: "verdict-score", textContent: ` ${scoreWords(r.score)}` }));
      }
      renderDraft($("v-draft-view"), draft, words, found);
      renderReasons($("v-reasons"), found);
      $("v-result").hidden = false;
    } catch (e) {
      const { message, detail } = explain(e);
      box.textContent = `${message} (${detail})`;
      box.hidden = false;
      if (e.status === 401) {
        document.getElementById("settings").open = true;
        $("api-key-field").hidden = false;
        $("api-key").focus();
      }
    } finally {
      button.disabled = false;
      button.textContent = "Check";
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    run();
  });
  // Ctrl/Cmd+Enter in a textarea checks (plain Enter stays a new line in a draft).
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  $("use-story").addEventListener("click", () => {
    const text = storyText();
    if (!text) {
      $("v-error").textContent = "Write a story first: its start becomes the context and the rest the draft.";
      $("v-error").hidden = false;
      return;
    }
    $("v-error").hidden = true;
    $("v-context").value = prompt();
    $("v-draft").value = text;
    $("v-draft").focus();
  });
}
