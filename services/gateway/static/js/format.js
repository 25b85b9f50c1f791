// Small number formats shared by the page's modules.

/** A weight in [0, 1] as a whole percentage. */
export function percent(w) {
  return Math.round(w * 100);
}

/** A probability short enough for a tooltip: "41.2%", "0.31%", "2.4e-6". */
export function formatProb(p) {
  if (!(p > 0)) return "0";
  if (p >= 0.001) return `${(p * 100).toFixed(p >= 0.1 ? 1 : 2)}%`;
  return p.toExponential(1);
}
