// One story pane: the prompt in a neutral colour, then the tokens as they stream in, with a
// marker where the weight changed and one where a model's context window slid.
//
// The tint marks the words one model clearly preferred: it gave the token at least CLEAR_LEAD
// times the other model's probability. The slider's weight is left out on purpose: with it
// (each model's share of the blend), at 85% logic nearly every word would be BDH's and the
// colour would say nothing the slider does not. Words both models liked about as much stay
// plain; the pure panes, and words the blend wrote at 0% or 100%, are never tinted. The
// inspector gives the shares.
// Every token is focusable (one tab stop per pane, arrow keys move between tokens) so the
// token inspector opens by click, tap or keyboard.

import { blendName, percent } from "./format.js";
import { family } from "./roles.js";

// A word is coloured when one model gave it at least this many times the other's probability;
// the colour is full at FULL_LEAD times.
export const CLEAR_LEAD = 3;
const FULL_LEAD = 30;

/** How much more BDH liked a token than GPT-2, as a natural log (+ BDH, − GPT-2). */
export function lead(pBdh, pGpt2) {
  if (!(pBdh > 0) && !(pGpt2 > 0)) return 0;
  return Math.log(Math.max(pBdh, 1e-30) / Math.max(pGpt2, 1e-30));
}

/** BDH's share of the blended probability of a token drawn at weight w (0.5 when both are 0). */
export function bdhShare(w, pBdh, pGpt2) {
  const b = w * pBdh;
  const g = (1 - w) * pGpt2;
  return b + g > 0 ? b / (b + g) : 0.5;
}

export class StoryPane {
  /** root: the pane's <article>; tint: whether its tokens are tinted (false in the pure panes). */
  constructor(root, { tint = true, badge = null, strip = null } = {}) {
    this.root = root;
    this.tint = tint;
    this.badgeEl = badge;
    this.strip = strip;
    this.textEl = root.querySelector('[data-role="text"]');
    this.metaEl = root.querySelector('[data-role="meta"]');
    this.tokens = [];  // the token events shown, in order (span.dataset.i indexes this)
    this.pieces = [];
    this.weights = [];  // [token number, weight] where the weight took each value
    this.tokenCount = 0;
    this.hasStory = false;
    this.finishReason = null;  // until this story ends (a Download meanwhile says "not finished")
    this.genStart = 0;  // tokenCount when this pane's current generation began (Continue starts another)
    this.schedule = null;
    this.heldShift = [];
    this.textEl.addEventListener("keydown", (e) => this.onKey(e));
  }

  clear() {
    this.textEl.replaceChildren();
    this.metaEl.textContent = "";
    this.root.classList.remove("is-error", "is-done", "is-stopped");
    delete this.root.dataset.stalled;
    this.lastWeight = null;
    this.seed = null;
    this.tokens = [];
    this.pieces = [];
    this.weights = [];
    this.tokenCount = 0;
    this.hasStory = false;
    this.genStart = 0;
    this.schedule = null;
    this.lineStart = false;
    this.heldShift = [];  // roles whose window slid at a token with no text yet: the next word tells it
    this.planned = 0;
    this.renderStrip();
  }

  /** A new story: the prompt heads it, in a neutral colour. */
  begin(prompt, label) {
    this.clear();
    this.prompt = prompt;
    const head = document.createElement("span");
    head.className = "prompt-head";
    head.textContent = prompt;
    this.textEl.append(head);
    this.lineStart = prompt.endsWith("\n");
    this.waiting(label);
  }

  /** The same story goes on (Continue): the text stays, new tokens follow it. */
  resume(label, plannedMore) {
    this.root.classList.remove("is-error", "is-done", "is-stopped");
    this.finishReason = null;
    this.planned = this.tokenCount + plannedMore;
    this.genStart = this.tokenCount;
    this.schedule = null;
    this.waiting(label);
  }

  waiting(label) {
    this.textEl.setAttribute("aria-busy", "true");
    this.root.dataset.state = "waiting";
    this.metaEl.textContent = label;
  }

  started(ev, planned) {
    this.root.dataset.state = "streaming";
    this.root.dataset.generationId = ev.id;
    this.seed = ev.seed;
    this.blend = ev.blend;
    if (planned) this.planned = this.tokenCount + planned;
    if (this.lastWeight === null) this.noteWeight(ev.logic_weight);
    // A one-model pane has no blend to name.
    this.metaEl.textContent = this.tint ? `seed ${ev.seed} · blend: ${blendName(ev.blend).toLowerCase()} · writing…`
      : `seed ${ev.seed} · writing…`;
  }

  noteWeight(w) {
    this.weights.push([this.tokenCount, w]);
    this.lastWeight = w;
    this.renderBadge();
  }

  addToken(ev) {
    this.noteSchedule(ev);
    if (this.lastWeight !== null && ev.logic_weight !== this.lastWeight) {
      this.addMarker(ev.logic_weight, this.tokenCount);
      this.noteWeight(ev.logic_weight);
    } else if (this.lastWeight === null) {
      this.noteWeight(ev.logic_weight);
    }
    this.tokenCount += 1;
    const shifted = [...new Set([...this.heldShift, ...(ev.context_shift || [])])];
    if (ev.context_shift && ev.context_shift.length) this.addShift(ev.context_shift);
    this.scheduleStrip();
    if (!ev.text) {  // end-of-text, or bytes the detokenizer holds until a character is whole:
      this.heldShift = shifted;  // the word shown after the mark tells of the slide
      return;
    }
    this.heldShift = [];
    this.hasStory = true;
    const span = document.createElement("span");
    const share = bdhShare(ev.logic_weight, ev.p_bdh, ev.p_gpt2);
    const lean = lead(ev.p_bdh, ev.p_gpt2);
    const clear = Math.log(CLEAR_LEAD);
    // At 0% or 100% one model wrote the word alone: colour would tell nothing, so none.
    const tinted = this.tint && ev.logic_weight > 0 && ev.logic_weight < 1;
    span.className = "tok " + (!tinted ? "by-none"
      : lean >= clear ? "by-bdh" : lean <= -clear ? "by-gpt2" : "by-both");
    // Strength past the plain band: 0 at CLEAR_LEAD times the other's probability, 1 at FULL_LEAD.
    const strength = (Math.abs(lean) - clear) / (Math.log(FULL_LEAD) - clear);
    if (tinted) span.style.setProperty("--a", Math.min(1, Math.max(0, strength)).toFixed(3));
    // Most tokens start with their space: tint only the word, so the text does not read as
    // gapped blocks. The span's textContent is still exactly the token's text.
    const [, space, word] = /^(\s*)([\s\S]*)$/.exec(ev.text);
    const ink = document.createElement("span");
    ink.className = "ink";
    ink.textContent = word;
    // A word that starts a line (after a line break) would show its space as an indent
    // (" work, Timmy…"): that one space goes in a hidden span, still in the text for copying.
    const nl = space.lastIndexOf("\n");
    const before = nl >= 0 ? space.slice(0, nl + 1) : "";
    const rest = nl >= 0 ? space.slice(nl + 1) : space;
    if ((nl >= 0 || this.lineStart) && rest.startsWith(" ")) {
      const indent = document.createElement("span");
      indent.className = "line-indent";
      indent.textContent = " ";
      span.append(before, indent, rest.slice(1), ink);
    } else {
      span.append(space, ink);
    }
    this.lineStart = ev.text.endsWith("\n");
    span.dataset.i = String(this.tokens.length);
    span.dataset.pBdh = ev.p_bdh;
    span.dataset.pGpt2 = ev.p_gpt2;
    span.dataset.pBlend = ev.p_blend;
    span.dataset.weight = String(percent(ev.logic_weight));
    span.dataset.share = share.toFixed(4);
    span.tabIndex = this.tokens.length === 0 ? 0 : -1;  // one tab stop per pane: the roving token
    span.setAttribute("aria-describedby", "inspector-summary");
    this.tokens.push({ ...ev, ...(shifted.length ? { context_shift: shifted } : {}), share, number: this.tokenCount });
    this.textEl.append(span);
    this.pieces.push(ev.text);
  }

  /** The weight schedule of this pane's current generation, from what its token events
   *  carry: the weight of its first token and each generated-token index where it changed. */
  noteSchedule(ev) {
    const k = this.tokenCount - this.genStart;
    if (k === 0 || !this.schedule) {
      this.schedule = { logic_weight: ev.logic_weight, steering: [] };
    } else if (ev.logic_weight !== this.drawnAt) {
      this.schedule.steering.push({ at: k, logic_weight: ev.logic_weight });
    }
    this.drawnAt = ev.logic_weight;
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

  /** A model's context window slid before this token: it now reads only the later part. */
  addShift(roles) {
    const mark = document.createElement("span");
    mark.className = "shift-mark";
    mark.dataset.roles = roles.join(" ");
    const who = roles.map(family).join(" and ");
    mark.setAttribute("role", "img");
    mark.setAttribute("aria-label", `${who} forgot the start of the story here (its window slid on)`);
    mark.title = mark.getAttribute("aria-label");
    mark.textContent = "⟲";
    this.textEl.append(mark);
  }

  // ---- the weight strip and the badge -----------------------------------------------------------
  scheduleStrip() {
    if (!this.strip || this.stripQueued) return;
    this.stripQueued = true;
    requestAnimationFrame(() => {
      this.stripQueued = false;
      this.renderStrip();
    });
  }

  /** A step line of the weight over the story's tokens (x: token, y: weight, 100% at the top). */
  renderStrip() {
    if (!this.strip) return;
    const { figure, svg } = this.strip;
    if (!this.weights.length) {
      figure.hidden = true;
      return;
    }
    figure.hidden = false;
    const n = Math.max(this.tokenCount, this.planned || 0, 1);
    const x = (i) => ((i / n) * 1000).toFixed(1);
    const y = (w) => (38 - w * 36).toFixed(1);
    let d = `M0,${y(this.weights[0][1])}`;
    for (const [at, w] of this.weights.slice(1)) d += ` H${x(at)} V${y(w)}`;
    d += ` H${x(this.tokenCount)}`;
    svg.querySelector(".strip-line").setAttribute("d", d);
    svg.querySelector(".strip-area").setAttribute("d", `${d} V40 H0 Z`);
    const steps = this.weights.map(([at, w]) => `${percent(w)}% from token ${at + 1}`);
    svg.setAttribute("aria-label", `Logic weight over the story: ${steps.join(", ")}`);
  }

  /** The weights this story was written at (kept when the slider moves after it). */
  renderBadge() {
    if (!this.badgeEl || !this.weights.length) return;
    const ws = this.weights.map(([, w]) => percent(w));
    const label = ws.length === 1 ? `${ws[0]}%` : ws.length === 2 ? `${ws[0]} → ${ws[1]}%` : `${ws[0]} → … → ${ws[ws.length - 1]}%`;
    this.badgeEl.textContent = `${label} logic`;
  }

  /** A story this browser kept (a history entry): its text, plain (no word details were
   *  kept), with how it ended. */
  restore(entry) {
    this.begin(entry.setup.prompt, "");
    const body = document.createElement("span");
    body.className = "restored";
    body.textContent = entry.text;
    this.textEl.append(body);
    this.pieces = [entry.text];
    this.tokenCount = entry.tokens || 0;
    this.hasStory = Boolean(entry.text);
    this.weights = entry.weights || [];
    this.lastWeight = this.weights.length ? this.weights[this.weights.length - 1][1] : null;
    this.renderBadge();
    this.settle("done");
    this.finishReason = entry.finish || null;
    this.seed = entry.setup.seed;
    this.metaEl.textContent = `from your history · ${this.tokenCount} word pieces · seed ${this.seed}`;
  }

  // ---- endings ------------------------------------------------------------------------------------
  end(ev) {
    this.settle("done");
    this.root.classList.add("is-done");
    const reason = { eos_token: "the story ended itself", length: "reached the length you set",
                     stop_sequence: "reached a stop sequence" }[ev.finish_reason] || ev.finish_reason;
    this.finishReason = ev.finish_reason;
    this.metaEl.textContent = `${this.tokenCount} word pieces · ${reason} · seed ${this.seed}`;
  }

  stopped() {
    this.settle("stopped");
    this.root.classList.add("is-stopped");
    this.finishReason = "stopped";
    this.metaEl.textContent = `stopped after ${this.tokenCount} word pieces`;
  }

  /** Never started (the blend it waits for failed or was stopped first). */
  skipped(message) {
    this.settle("skipped");
    this.metaEl.textContent = message;
  }

  fail(message) {
    this.settle("error");
    this.root.classList.add("is-error");
    this.finishReason = "error";
    this.metaEl.textContent = message;
  }

  settle(state) {
    this.planned = 0;  // the strip now spans the story as written
    this.textEl.setAttribute("aria-busy", "false");
    this.root.dataset.state = state;
    this.stall(false);
    this.renderStrip();
  }

  /** No token for a while: say what the pane waits for (null clears it). */
  stall(message) {
    if (message) {
      this.root.dataset.stalled = "true";
      this.metaEl.dataset.before = this.metaEl.dataset.before || this.metaEl.textContent;
      this.metaEl.textContent = message;
    } else if (this.root.dataset.stalled) {
      delete this.root.dataset.stalled;
      if (this.root.dataset.state === "streaming" || this.root.dataset.state === "waiting") {
        this.metaEl.textContent = this.metaEl.dataset.before || "";
      }
      delete this.metaEl.dataset.before;
    }
  }

  /** The story's text, without the prompt and the markers. */
  text() {
    return this.pieces.join("");
  }

  // ---- keyboard: one tab stop, arrows move between tokens ----------------------------------------
  onKey(e) {
    const tok = e.target.closest && e.target.closest(".tok");
    if (!tok) return;
    const all = [...this.textEl.querySelectorAll(".tok")];
    const i = all.indexOf(tok);
    const to = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: all.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const next = all[Math.max(0, Math.min(all.length - 1, to))];
    if (next) focusToken(next);
  }

  tokenOf(span) {
    return this.tokens[Number(span.dataset.i)];
  }
}

/** Focus a token and make it its pane's tab stop. */
export function focusToken(span) {
  const text = span.closest('[data-role="text"]');
  for (const t of text.querySelectorAll('.tok[tabindex="0"]')) t.tabIndex = -1;
  span.tabIndex = 0;
  span.focus();
}

