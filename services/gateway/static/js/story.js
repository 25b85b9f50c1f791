// One story pane: tokens stream in as tinted spans, with markers where the weight changed.
//
// The tint says which model favoured the token that was drawn: the log-ratio of BDH's to
// GPT-2's probability for it, so a token both liked equally stays plain whatever its
// absolute probability. Both probabilities (and the blend's) go in the title for hover.

import { formatProb, percent } from "./format.js";

// log2(p_bdh / p_gpt2) at which the tint is full: 16x more likely under one model.
const FULL_TINT_BITS = 4;
// Below this |lean| (half a bit: under 1.41x) the models agree and the token stays plain,
// so the colour picks out the tokens that one model really drove.
const PLAIN_BELOW = 0.125;
const TINY = 1e-30;  // a probability that underflowed to 0 still has a side

export function lean(pBdh, pGpt2) {
  const bits = Math.log2(Math.max(pBdh, TINY) / Math.max(pGpt2, TINY));
  return Math.max(-1, Math.min(1, bits / FULL_TINT_BITS));
}

export class StoryPane {
  constructor(root) {
    this.root = root;
    this.textEl = root.querySelector('[data-role="text"]');
    this.metaEl = root.querySelector('[data-role="meta"]');
    this.clear();
  }

  clear() {
    this.textEl.replaceChildren();
    this.metaEl.textContent = "";
    this.root.classList.remove("is-error", "is-done", "is-stopped");
    this.lastWeight = null;
    this.seed = null;
    this.pieces = [];
    this.tokenCount = 0;
  }

  begin(label) {
    this.clear();
    this.textEl.setAttribute("aria-busy", "true");
    this.root.dataset.state = "waiting";
    this.metaEl.textContent = label;
  }

  started(ev) {
    this.root.dataset.state = "streaming";
    this.root.dataset.generationId = ev.id;
    this.lastWeight = ev.logic_weight;
    this.seed = ev.seed;
    this.metaEl.textContent = `seed ${ev.seed} · ${ev.blend} blend · streaming…`;
  }

  addToken(ev) {
    this.tokenCount += 1;
    if (this.lastWeight !== null && ev.logic_weight !== this.lastWeight) this.addMarker(ev.logic_weight, ev.index);
    this.lastWeight = ev.logic_weight;
    if (!ev.text) return;  // end-of-text, or bytes the detokenizer holds until a character is whole
    const span = document.createElement("span");
    const l = lean(ev.p_bdh, ev.p_gpt2);
    span.className = "tok " + (l >= PLAIN_BELOW ? "by-bdh" : l <= -PLAIN_BELOW ? "by-gpt2" : "by-both");
    span.style.setProperty("--a", Math.abs(l).toFixed(3));
    // Most tokens start with their space: tint only the word, so the text does not read as
    // gapped blocks. The span's textContent is still exactly the token's text.
    const [, space, word] = /^(\s*)([\s\S]*)$/.exec(ev.text);
    const ink = document.createElement("span");
    ink.className = "ink";
    ink.textContent = word;
    span.append(space, ink);
    span.dataset.pBdh = ev.p_bdh;
    span.dataset.pGpt2 = ev.p_gpt2;
    span.title = `BDH ${formatProb(ev.p_bdh)} · GPT-2 ${formatProb(ev.p_gpt2)} · blend ${formatProb(ev.p_blend)}`
      + ` · weight ${percent(ev.logic_weight)}% logic`;
    this.textEl.append(span);
    this.pieces.push(ev.text);
  }

  addMarker(weight, index) {
    const mark = document.createElement("span");
    mark.className = "steer-mark";
    mark.dataset.weight = String(percent(weight));
    mark.dataset.index = String(index);
    mark.title = `From token ${index + 1} on, the weight is ${percent(weight)}% logic`;
    mark.textContent = `→ ${percent(weight)}%`;
    this.textEl.append(mark);
  }

  end(ev) {
    this.textEl.setAttribute("aria-busy", "false");
    this.root.dataset.state = "done";
    this.root.classList.add("is-done");
    const speed = ev.timings && ev.timings.tokens_per_s ? ` · ${Math.round(ev.timings.tokens_per_s)} tok/s` : "";
    const reason = { eos_token: "end of text", length: "length limit", stop_sequence: "stop sequence" }[ev.finish_reason]
      || ev.finish_reason;
    this.metaEl.textContent = `${ev.usage.completion_tokens} tokens · ${reason}${speed} · seed ${this.seed}`;
  }

  stopped() {
    this.textEl.setAttribute("aria-busy", "false");
    this.root.dataset.state = "stopped";
    this.root.classList.add("is-stopped");
    this.metaEl.textContent = `stopped after ${this.tokenCount} tokens`;
  }

  /** Never started (the blend it waits for failed or was stopped first). */
  skipped(message) {
    this.textEl.setAttribute("aria-busy", "false");
    this.root.dataset.state = "skipped";
    this.metaEl.textContent = message;
  }

  fail(message) {
    this.textEl.setAttribute("aria-busy", "false");
    this.root.dataset.state = "error";
    this.root.classList.add("is-error");
    this.metaEl.textContent = message;
  }

  /** The story's text, without the markers. */
  text() {
    return this.pieces.join("");
  }
}
