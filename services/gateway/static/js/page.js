// What the page's modules share: the three story panes, the word inspector, the story being
// written and the last one written, and a few facts about the screen.

import { Inspector } from "./inspector.js";
import { StoryPane } from "./story.js";

export const $ = (id) => document.getElementById(id);

export const panes = {
  blend: new StoryPane($("pane-blend"), { badge: $("blend-badge"), strip: { figure: $("strip"), svg: $("strip-svg") } }),
  gpt2: new StoryPane($("pane-gpt2"), { tint: false }),
  bdh: new StoryPane($("pane-bdh"), { tint: false }),
};
export const inspector = new Inspector(Object.values(panes));

export const state = {
  // The generation in progress: its AbortController (Stop aborts every stream of it: the
  // gateway ends a generation whose client left and frees both servers' sessions), the id
  // that live steering addresses, when its last token came, its first failure, whether Stop
  // was pressed, and the blend's closing status once the blend has ended (the side panes of
  // the split view may still be writing: the run lasts until they end too).
  run: null,
  // The last story written: its setup (what was sent), the weight schedule its token events
  // carried (replay: what writes it again, steering included), whether it had the side panes,
  // how often it was continued, and its history entry.
  last: null,
};

// On a phone or tablet there is no Shift key to add a line: Enter adds one, a button generates.
export const touch = matchMedia("(pointer: coarse)").matches
  || (navigator.maxTouchPoints > 0 && matchMedia("(hover: none)").matches);

export const oneColumn = matchMedia("(max-width: 860px)");
export const motion = () => (matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth");
