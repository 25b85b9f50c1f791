// What leaves the page: a story copied, downloaded as Markdown with its settings, a share
// link that restores the page, and a short history of this browser's runs.
//
// A "setup" is what writes a story again: {prompt, logic_weight, blend, max_new_tokens,
// temperature, top_k, top_p, seed, split, steering}. `steering` is the weight schedule the
// story was drawn at ([{at, logic_weight}], `at` the 0-based generated token from which the
// weight applies), read back from its token events, so a story steered mid-way is written
// again token for token: with the same models, the same setup writes the same story.

import { blendName, percent } from "./format.js";

// The gateway takes at most this many points in a schedule.
export const MAX_STEERING = 64;

// ---- share links: the setup in the URL's fragment (never sent to the server) ------------------
const SHORT = { prompt: "p", logic_weight: "w", blend: "b", max_new_tokens: "n", temperature: "t", top_k: "k",
                top_p: "tp", seed: "s", split: "split" };

export function shareLink(setup) {
  const q = new URLSearchParams();
  for (const [name, key] of Object.entries(SHORT)) {
    const v = setup[name];
    if (v === null || v === undefined) continue;
    q.set(key, name === "logic_weight" ? String(percent(v)) : name === "split" ? (v ? "1" : "0") : String(v));
  }
  // "steer=12:18,40:70": from token index 12 on 18% logic, from 40 on 70%. Added by hand so
  // the colons and commas stay readable (both are fine in a fragment).
  const steer = (setup.steering || []).slice(0, MAX_STEERING).map((s) => `${s.at}:${percent(s.logic_weight)}`).join(",");
  return `${location.origin}${location.pathname}#${q.toString()}${steer ? `&steer=${steer}` : ""}`;
}

/** A "steer" value back as a schedule; what the gateway would refuse (out of order, out of
 *  range, malformed) ends it there, so a mangled link still opens. */
export function parseSteering(value) {
  const out = [];
  for (const part of (value || "").split(",")) {
    const m = /^(\d+):(\d+)$/.exec(part.trim());
    if (!m) break;
    const at = Number(m[1]);
    const pct = Number(m[2]);
    if (pct > 100 || (out.length && at <= out[out.length - 1].at) || out.length >= MAX_STEERING) break;
    out.push({ at, logic_weight: pct / 100 });
  }
  return out;
}

/** The setup a share link carries, or null when the fragment holds none. */
export function readShareLink(hash) {
  const q = new URLSearchParams(hash.replace(/^#/, ""));
  if (!q.has("p")) return null;
  const num = (key) => (q.has(key) && q.get(key) !== "" && Number.isFinite(Number(q.get(key))) ? Number(q.get(key)) : null);
  const w = num("w");
  return {
    prompt: q.get("p"),
    logic_weight: w === null ? null : Math.min(100, Math.max(0, Math.round(w))) / 100,
    blend: q.get("b"),
    max_new_tokens: num("n"),
    temperature: num("t"),
    top_k: num("k"),
    top_p: num("tp"),
    seed: num("s"),
    split: q.has("split") ? q.get("split") === "1" : null,
    steering: parseSteering(q.get("steer")),
  };
}

/** The weights a story was written at, in words: "85% logic", or "85% logic → 18% from token
 *  13" (tokens counted from 1, as the markers and the strip count them). short: at most two
 *  changes spelt out (a history line). */
export function describeWeights(start, steering = [], { short = false } = {}) {
  const steps = (steering || []).map((s) => `${percent(s.logic_weight)}% from token ${s.at + 1}`);
  const head = `${percent(start)}% logic`;
  if (!steps.length) return head;
  if (short && steps.length > 2) return `${head} → … → ${steps[steps.length - 1]} (${steps.length} changes)`;
  return [head, ...steps].join(" → ");
}

// ---- copy and download ---------------------------------------------------------------------------
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (an insecure origin, say): the old way, through a hidden textarea.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const ok = document.execCommand && document.execCommand("copy");
    area.remove();
    return Boolean(ok);
  }
}

const FINISH = { eos_token: "the story ended itself", length: "it reached the length limit",
                 stop_sequence: "it reached a stop sequence", stopped: "stopped by hand", error: "stopped by an error" };

/** The story as Markdown, its settings listed after it. setup: the setup that writes it again
 *  (its steering included); continued: how often Continue added to it. */
export function markdown({ setup, text, tokens, finish, link, continued = 0 }) {
  const start = percent(setup.logic_weight);
  const lines = [
    "# A PlotArmour story",
    "",
    (setup.prompt + text).trim(),
    "",
    "---",
    "",
    `- Logic weight: ${start}% logic (BDH), ${100 - start}% creativity (GPT-2)`
      + `${setup.steering && setup.steering.length ? `; steered: ${describeWeights(setup.logic_weight, setup.steering)}` : ""}`,
    `- Blend: ${blendName(setup.blend)}`,
    `- Seed: ${setup.seed}`,
    `- Temperature: ${setup.temperature} · top-k: ${setup.top_k || "none"} · top-p: ${setup.top_p}`,
    `- Max new tokens: ${setup.max_new_tokens}`,
    `- Written: ${tokens} tokens; ${FINISH[finish] || finish || "not finished"}`,
    `- Prompt: ${JSON.stringify(setup.prompt)}`,
    `- Date: ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
    `- Write it again${continued ? " (its first part: Continue wrote the rest)" : ""}: ${link}`,
    "",
  ];
  return lines.join("\n");
}

export function download(filename, text, type = "text/markdown") {
  const url = URL.createObjectURL(new Blob([text], { type: `${type};charset=utf-8` }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---- history: the last runs in this browser (localStorage) ----------------------------------------
const HISTORY_KEY = "plotarmour.history";
const HISTORY_MAX = 12;
const TEXT_MAX = 4000;

export function loadHistory() {
  try {
    const items = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    return Array.isArray(items) ? items.filter((h) => h && h.setup && typeof h.setup.prompt === "string") : [];
  } catch {
    return [];
  }
}

export function remember(entry) {
  const text = entry.text.slice(0, TEXT_MAX);
  const same = (item) => item.text === text && JSON.stringify(item.setup) === JSON.stringify(entry.setup);
  // The same story written twice (one seed, one setup) is one entry, the latest.
  const items = [{ ...entry, text, at: Date.now() }, ...loadHistory().filter((item) => !same(item))].slice(0, HISTORY_MAX);
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(items));
  } catch {
    // Storage full or blocked (a private window): the history is a convenience, not a must.
  }
  return items;
}

export function forgetHistory() {
  try {
    localStorage.removeItem(HISTORY_KEY);
  } catch {
    // blocked: nothing was kept either
  }
}
