// Small number and text formats shared by the page's modules.

/** A weight in [0, 1] as a whole percentage. */
export function percent(w) {
  return Math.round(w * 100);
}

/** A probability as a plain percentage a reader knows: "41.2%", "0.31%", "0.05%", "< 0.01%"
 *  (never scientific notation: "5.3e-4" means nothing to a storyteller). */
export function formatProb(p) {
  if (!(p > 0)) return "0%";
  if (p < 0.00005) return "< 0.01%";  // would round to 0.00%
  return `${(p * 100).toFixed(p >= 0.1 ? 1 : 2)}%`;
}

/** A token's text as a reader can see it: a piece that is only spacing is named in words,
 *  never shown empty. */
export function visible(text) {
  if (text === "") return "(nothing)";
  // the end-of-text token (as a single token it can be nothing else): words for a storyteller
  if (text === "<|endoftext|>") return "(the end)";
  if (text.trim() === "") return text.includes("\n") ? "(line break)" : text.includes("\t") ? "(tab)" : "(space)";
  return text.trim().replace(/\s*\n\s*/g, " / ");  // a line break inside a piece: a slash, as in verse
}

/** The blends in a storyteller's words, by the gateway's registry names (the values sent);
 *  [label, hover text]. An unknown name keeps itself. */
export const BLEND_LABELS = {
  linear: ["Either can lead", "A word either storyteller likes can win, in proportion to the mix."],
  geometric: ["Both must agree", "A word wins only if both storytellers like it: safer, less surprising."],
};

export function blendName(value) {
  return (BLEND_LABELS[value] || [value])[0];
}
