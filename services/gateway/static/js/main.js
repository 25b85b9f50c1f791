// The story page: wires the form, the mix slider, the three story panes, live steering, the
// token inspector, the output buttons and the logic check to the gateway's API. No
// framework and no build step. Each concern lives in its own module; this one only wires them
// together, in the order the page needs:
//
//   page.js       what the modules share: the panes, the inspector, the run and the last story
//   mix.js        the slider, its label and presets, the steering a restored story replays
//   steering.js   live steering of the story being written
//   setup.js      the form as a setup: read, filled in, presets, examples, blend names
//   run.js        Generate, Retry, Continue and Stop
//   stall.js      saying what a story that stopped moving waits for
//   status.js     the status line and the one error message
//   keys.js       Enter, Ctrl/Cmd+Enter and Esc
//   dock.js       the phone's bottom bar, out of the way in the logic check
//   tint.js       the Colours switch
//   actions.js    Copy, Download, Share link
//   history.js    this browser's recent stories
//   shared.js     a share link opened
//   apikey.js     the API key field
//   readiness.js  the readiness badge and the gateway's length limit

import { updateOutputs, wireActions } from "./actions.js";
import { wireApiKey } from "./apikey.js";
import { wireDock } from "./dock.js";
import { renderHistory, wireHistory } from "./history.js";
import { wireKeys } from "./keys.js";
import { wireMix } from "./mix.js";
import { $, panes, state } from "./page.js";
import { checkReadiness, loadLimits } from "./readiness.js";
import { wireRun } from "./run.js";
import { showDefaultPreset, wireSetup } from "./setup.js";
import { openShareLink, wireShareLinks } from "./shared.js";
import { wireSteering } from "./steering.js";
import { wireTint } from "./tint.js";
import { setupValidator } from "./validator.js";

wireKeys();
wireMix();
wireSteering();
wireRun();
wireSetup();
wireDock();
wireTint();
wireActions();
wireHistory();
wireApiKey();
wireShareLinks();

// The page starts at the default preset, shown as selected; a share link (below) replaces it.
showDefaultPreset();
setupValidator({ storyText: () => panes.blend.text(), prompt: () => (state.last ? state.last.setup.prompt : $("prompt").value) });
renderHistory();
openShareLink();
updateOutputs();
loadLimits();
checkReadiness();
setInterval(checkReadiness, 10000);
document.documentElement.dataset.ready = "true";  // the page's scripts are wired (tests wait for this)
