// The API key field, shown only once the gateway asks for one (a 401); the key itself lives
// in api.js (this tab's sessionStorage).

import { setApiKey } from "./api.js";
import { $ } from "./page.js";
import { checkReadiness, loadLimits } from "./readiness.js";

export function showApiKey() {
  $("settings").open = true;
  $("api-key-field").hidden = false;
  $("api-key").focus();
}

export function wireApiKey() {
  // A new key may open what the last one could not: ask the gateway again.
  $("api-key").addEventListener("change", () => {
    setApiKey($("api-key").value.trim());
    loadLimits();
    checkReadiness();
  });
}
