// The gateway's state as the page shows it: the readiness badge (both model servers answer,
// or which does not) and the length limit the gateway allows.

import { info, readiness } from "./api.js";
import { $ } from "./page.js";

let readinessAsked = 0;

export async function checkReadiness() {
  const pill = $("readiness");
  const asked = ++readinessAsked;
  const r = await readiness();
  if (asked !== readinessAsked) return;  // a later check already answered
  pill.className = `pill ${r.ready ? "pill-ok" : "pill-bad"}`;
  pill.textContent = r.ready ? "Models ready" : "A model is not answering";
  pill.title = r.ready ? "Both model servers answer" : (r.problems.length ? r.problems.join("\n") : "See /ready");
}

/** The Length field's maximum, and its default where the reader has not changed it. */
export async function loadLimits() {
  const i = await info();
  if (!i) return;
  const limits = i.gateway.limits;
  const maxTokens = $("max-tokens");
  maxTokens.max = String(limits.max_new_tokens_limit);
  if (maxTokens.value === maxTokens.defaultValue && !location.hash) maxTokens.value = String(limits.default_max_new_tokens);
}
