// The logic validator panel: sends context + draft to /validate and shows the draft with
// the flagged spans highlighted, each with its reason (on hover, and listed below for
// keyboard and screen-reader users: each mark points at its reason).

import { validate } from "./api.js";
import { describe } from "./errors.js";

const $ = (id) => document.getElementById(id);

/** The draft as text nodes and <mark>s; spans are character offsets into it, in order. */
export function renderDraft(container, draft, spans) {
  container.replaceChildren();
  let at = 0;
  spans.forEach((span, i) => {
    if (span.start > at) container.append(draft.slice(at, span.start));
    const mark = document.createElement("mark");
    mark.className = "flag";
    mark.textContent = draft.slice(span.start, span.end);
    mark.title = span.reason;
    mark.tabIndex = 0;  // reachable by keyboard, so its reason is too
    mark.setAttribute("aria-describedby", `v-reason-${i}`);
    mark.dataset.start = span.start;
    mark.dataset.end = span.end;
    container.append(mark);
    at = Math.max(at, span.end);
  });
  if (at < draft.length) container.append(draft.slice(at));
}

function renderReasons(list, spans) {
  list.replaceChildren(...spans.map((span, i) => {
    const li = document.createElement("li");
    li.id = `v-reason-${i}`;
    const quote = document.createElement("q");
    quote.textContent = span.text;
    li.append(quote, ` — ${span.reason}`);
    return li;
  }));
}

export function setupValidator({ storyText, prompt }) {
  const form = $("validate-form");
  const button = $("validate");

  async function run() {
    const box = $("v-error");
    box.hidden = true;
    for (const el of form.querySelectorAll("textarea, input")) {
      if (!el.checkValidity()) {
        box.textContent = `${el.id === "v-bits" ? "Sensitivity" : "Draft"}: ${el.validationMessage}`;
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
    button.disabled = true;
    button.textContent = "Validating…";
    try {
      const r = await validate({ context, draft: sep + draft, min_excess_bits: Number($("v-bits").value) });
      const spans = r.spans
        .map((s) => ({ ...s, start: Math.max(0, s.start - sep.length), end: Math.max(0, s.end - sep.length) }))
        .filter((s) => s.end > s.start)
        .sort((a, b) => a.start - b.start);
      const mean = `mean surprisal: BDH ${r.mean_surprisal_bits.bdh.toFixed(1)} bits, GPT-2 ${r.mean_surprisal_bits.gpt2.toFixed(1)} bits`;
      const verdict = $("v-verdict");
      verdict.className = `verdict ${r.consistent ? "ok" : "flagged"}`;
      verdict.textContent = r.consistent
        ? `Consistent: nothing stands out to BDH (${mean}).`
        : `${spans.length} improbable ${spans.length === 1 ? "span" : "spans"} for BDH (${mean}).`;
      renderDraft($("v-draft-view"), draft, spans);
      renderReasons($("v-reasons"), spans);
      $("v-result").hidden = false;
    } catch (e) {
      box.textContent = describe(e);
      box.hidden = false;
      if (e.status === 401) {
        $("api-key-field").hidden = false;
        $("api-key").focus();
      }
    } finally {
      button.disabled = false;
      button.textContent = "Validate";
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    run();
  });
  // Ctrl/Cmd+Enter in a textarea validates (plain Enter stays a new line in a draft).
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  $("use-story").addEventListener("click", () => {
    const text = storyText();
    if (!text) {
      $("v-error").textContent = "Generate a story first: its prompt becomes the context and its text the draft.";
      $("v-error").hidden = false;
      return;
    }
    $("v-context").value = prompt();
    $("v-draft").value = text;
    $("v-draft").focus();
  });
}
