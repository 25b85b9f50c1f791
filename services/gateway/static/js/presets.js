// The page's presets: one place, read by the page (main.js) and by bench/bench_stories.py,
// which measures each one. The object is plain JSON so that the bench can read it too.
// DEFAULT_PRESET is what the page starts at, shown as selected; the native API's defaults
// (temperature, top_p, top_k in services/gateway/schemas.py) are the same numbers.
export const PRESETS = {
  "wild": {"logic_weight": 0.15, "temperature": 1.2, "top_k": 0, "top_p": 1},
  "balanced": {"logic_weight": 0.5, "temperature": 1, "top_k": 0, "top_p": 0.9},
  "strict": {"logic_weight": 0.85, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
};
export const DEFAULT_PRESET = "balanced";
