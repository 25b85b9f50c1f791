// Small number and text formats shared by the page's modules.

/** A weight in [0, 1] as a whole percentage. */
export function percent(w) {
  return Math.round(w * 100);
}

/** A probability short enough for a small panel: "41.2%", "0.31%", "2.4e-6". */
export function formatProb(p) {
  if (!(p > 0)) return "0";
  if (p >= 0.001) return `${(p * 100).toFixed(p >= 0.1 ? 1 : 2)}%`;
  return p.toExponential(1);
}

/** A token's text as a reader can see it: its spaces and line breaks shown, never empty. */
export function visible(text) {
  if (text === "") return "∅";
  const shown = text.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  return shown.trim() === "" ? shown.replace(/ /g, "␣") : shown.trim();
}
