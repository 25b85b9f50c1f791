// The token inspector: a small panel beside a word with each model's probability for it, the
// blend's, the weight in effect when it was drawn, each model's share of the blend (what the
// tint shows) and each model's likeliest alternatives. Click, tap or keyboard focus on a word
// opens it; Esc, the close button or a click elsewhere closes it. Focus stays on the word, so
// the arrow keys walk the story with the panel following; Enter takes focus into the panel
// (to read its columns) and Esc or Tab brings it back to the word.

import { formatProb, percent, visible } from "./format.js";
import { FAMILIES, family } from "./roles.js";
import { CLEAR_LEAD, lead } from "./story.js";

const $ = (id) => document.getElementById(id);
const COLUMNS = [["blend", "Blend"], ...FAMILIES];

/** A part of the whole as a whole percentage, never a misleading 0% or 100%. */
function sharePercent(x) {
  if (x > 0 && x < 0.005) return "< 1%";
  if (x < 1 && x > 0.995) return "> 99%";
  return `${Math.round(x * 100)}%`;
}

export class Inspector {
  /** panes: the StoryPanes whose words it explains. */
  constructor(panes) {
    this.panes = panes;
    this.el = $("inspector");
    this.current = null;
    for (const pane of panes) {
      pane.textEl.addEventListener("click", (e) => {
        const span = e.target.closest(".tok");
        if (span) this.open(pane, span);
      });
      pane.textEl.addEventListener("focusin", (e) => {
        const span = e.target.closest(".tok");
        if (span && !this.refocusing) this.open(pane, span);
      });
      pane.textEl.addEventListener("focusout", (e) => {
        // Tabbing away from the story closes it; moving to another word or into the panel does not.
        const to = e.relatedTarget;
        if (to && !(to.closest && (to.closest(".tok") || this.el.contains(to)))) this.close();
      });
    }
    $("inspector-close").addEventListener("click", () => this.close(true));
    // The panel sits at the end of the page: Enter on a word goes into it, Tab comes back.
    for (const pane of panes) {
      pane.textEl.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && this.current && e.target === this.current.span) {
          e.preventDefault();
          this.el.focus();
        }
      });
    }
    this.el.addEventListener("keydown", (e) => {
      if (e.key === "Tab" && this.current) {
        e.preventDefault();
        this.current.span.focus();
      }
    });
    document.addEventListener("click", (e) => {
      if (this.current && !this.el.contains(e.target) && !e.target.closest(".tok")) this.close();
    });
    window.addEventListener("resize", () => this.current && this.place(this.current.span));
  }

  get isOpen() {
    return !this.el.hidden;
  }

  open(pane, span) {
    const t = pane.tokenOf(span);
    if (!t) return;
    if (this.current) this.current.span.classList.remove("is-inspected");
    this.current = { pane, span };
    span.classList.add("is-inspected");
    this.el.dataset.tokenIndex = span.dataset.i;
    this.el.dataset.pane = pane.root.id;
    this.render(pane, t);
    this.el.hidden = false;
    this.place(span);
  }

  /** refocus: give focus back to the word (the close button had it). */
  close(refocus = false) {
    if (!this.current) return;
    const { span } = this.current;
    span.classList.remove("is-inspected");
    this.current = null;
    this.el.hidden = true;
    if (refocus) {
      // focus lands on the word synchronously: its focusin must not open the panel again
      this.refocusing = true;
      span.focus();
      this.refocusing = false;
    }
  }

  render(pane, t) {
    $("inspector-title").textContent = `“${visible(t.text)}” · token ${t.number}`;
    $("inspector-summary").textContent = this.summary(pane, t);
    const bar = $("inspector-share");
    bar.hidden = !pane.tint;
    bar.firstElementChild.style.width = `${((1 - t.share) * 100).toFixed(1)}%`;
    bar.lastElementChild.style.width = `${(t.share * 100).toFixed(1)}%`;

    const shift = $("inspector-shift");
    const shifted = t.context_shift || [];
    shift.hidden = !shifted.length;
    shift.textContent = shifted.length
      ? `${shifted.map(family).join(" and ")} had to forget the start of the story just before this word.`
      : "";

    const alts = $("inspector-alts");
    if (!t.alternatives) {
      alts.replaceChildren(Object.assign(document.createElement("p"), {
        className: "hint", textContent: "No alternatives were sent for this word." }));
      return;
    }
    // A pane written by one model alone has no blend of its own to list, and a model the
    // slider did not ask (0% or 100%) has nothing to list.
    const columns = (pane.tint ? COLUMNS : COLUMNS.filter(([role]) => role !== "blend"))
      .filter(([role]) => role === "blend" || t[`p_${role}`] !== null);
    alts.replaceChildren(...columns.map(([role, name]) => {
      const col = document.createElement("section");
      col.className = `alt-col alt-${role}`;
      const h = document.createElement("h4");
      h.textContent = name;
      const list = document.createElement("ol");
      for (const a of (t.alternatives[role] || []).slice(0, 5)) {
        const li = document.createElement("li");
        if (a.id === t.id) li.className = "is-chosen";
        const word = document.createElement("span");
        word.className = "alt-text";
        word.textContent = visible(a.text);
        const p = document.createElement("span");
        p.className = "alt-p";
        p.textContent = formatProb(a.p);
        li.append(word, p);
        list.append(li);
      }
      col.append(h, list);
      return col;
    }));
  }

  /** In the blend: each model's share of it, larger first, with its two factors, so the reader
   *  sees the slider's weight is part of it (a word BDH found likelier can still be mostly
   *  GPT-2's), then why the word is coloured or not (which model liked it how many times more).
   *  In a pure pane: who wrote it and both models' odds. */
  summary(pane, t) {
    const w = percent(t.logic_weight);
    if (!pane.tint || t.p_gpt2 === null || t.p_bdh === null) {
      // At 0% or 100% the other model is not asked (its share would be 0): say so, not "0%".
      const [name, other, p] = t.logic_weight >= 1 ? ["BDH", "GPT-2", t.p_bdh] : ["GPT-2", "BDH", t.p_gpt2];
      const otherP = t.logic_weight >= 1 ? t.p_gpt2 : t.p_bdh;
      return `Written by ${name} alone: ${name} gave this word ${formatProb(p)}`
        + (otherP === null ? `; ${other} was not asked.` : `, ${other} ${formatProb(otherP)}.`);
    }
    // Each model's part of the blended probability, which the slider's weight scales
    // (w·p_bdh against (1 − w)·p_gpt2); then the tint's measure, the weight left out.
    const [first, second] = t.share > 0.5 ? [["BDH", t.share], ["GPT-2", 1 - t.share]]
      : [["GPT-2", 1 - t.share], ["BDH", t.share]];
    return `Blend ${formatProb(t.p_blend)}, written at ${w}% logic. GPT-2 gave this word ${formatProb(t.p_gpt2)} `
      + `and BDH ${formatProb(t.p_bdh)}; weighted by the slider, ${first[0]} brought ${sharePercent(first[1])} `
      + `of it and ${second[0]} ${sharePercent(second[1])}. ${this.colourWhy(t)}`
      // With "Both must agree" the blend multiplies the two, so the parts (the tint) are a guide.
      + (pane.blend === "geometric" ? " (Both must agree: the blend multiplies the two, so these parts are a guide.)" : "");
  }

  /** Why the word is coloured or plain, in the tint's own measure (story.js). */
  colourWhy(t) {
    const l = lead(t.p_bdh, t.p_gpt2);  // the same measure, and test, as the colour's
    const ratio = Math.exp(Math.abs(l));
    const [more, less] = l > 0 ? ["BDH", "GPT-2"] : ["GPT-2", "BDH"];
    const times = ratio > 1000 ? "over 1,000" : ratio >= 10 ? Math.round(ratio).toLocaleString() : ratio.toFixed(1);
    return Math.abs(l) >= Math.log(CLEAR_LEAD) ? `${more} liked it ${times}× as much as ${less}: coloured ${more}'s.`
      : `Neither liked it ${CLEAR_LEAD}× as much as the other: not coloured.`;
  }

  /** Under the word (above it when there is no room below), inside the window. */
  place(span) {
    const r = span.getBoundingClientRect();
    const box = this.el.getBoundingClientRect();
    const vw = document.documentElement.clientWidth;
    // On a phone the dock covers the bottom of the screen: keep the panel above it.
    const dock = document.querySelector(".dock");
    const docked = dock && getComputedStyle(dock).position === "fixed" && !dock.classList.contains("is-away");
    const dockTop = docked ? dock.getBoundingClientRect().top : innerHeight;
    let top = r.bottom + 6;
    if (top + box.height > dockTop - 4 && r.top - box.height - 6 > 0) top = r.top - box.height - 6;
    const left = Math.max(8, Math.min(r.left, vw - box.width - 8));
    this.el.style.top = `${Math.round(top + scrollY)}px`;
    this.el.style.left = `${Math.round(left + scrollX)}px`;
  }
}
