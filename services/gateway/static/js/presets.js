// The page's presets: one place, read by the page (main.js), the gateway (presets.py: the
// native API's defaults are the default preset's numbers) and bench/bench_stories.py, which
// measures each one and chose Balanced's sampling (temperature 0.9, top-p 0.95: of the
// settings measured, the stories closest to real ones in distinct word pairs and repeated
// 4-grams, for four trained pairs running, and still more probable than real ones to both
// models). The object is plain JSON so that Python can read it too.
export const PRESETS = {
  "wild": {"logic_weight": 0.15, "temperature": 1, "top_k": 0, "top_p": 1},
  "balanced": {"logic_weight": 0.5, "temperature": 0.9, "top_k": 0, "top_p": 0.95},
  "strict": {"logic_weight": 0.85, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
};
export const DEFAULT_PRESET = "balanced";
