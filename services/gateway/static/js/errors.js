// What the page says for each kind of failure: one plain sentence for a storyteller, and
// the gateway's own words (which name the field) kept for a "Details" line. The gateway never
// sends a server's address or gRPC text (those are in its log).

import { ApiError } from "./api.js";
import { FAMILIES } from "./roles.js";

// The gateway names a missing model by its role and family: "The logic model (BDH) is not answering".
const NAMES_A_MODEL = new RegExp(`model \\((${FAMILIES.map(([, f]) => f).join("|")})\\)`);

/** {message, detail} for an error; message is plain language, detail the technical part. */
export function explain(err) {
  if (!(err instanceof ApiError)) {
    return { message: "Something went wrong in this page. Reloading it may help.", detail: String(err && err.message || err) };
  }
  const detail = `${err.status ? `HTTP ${err.status}: ` : ""}${err.message}`;
  const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : " Try again in a moment.";
  switch (err.status) {
    case 0:
      return { message: "Cannot reach the PlotArmour gateway. Is it still running?", detail };
    case 401:
      return { message: "This gateway needs an API key: enter it under More settings, then try again.", detail };
    case 413:
      return { message: "That is too much text for the gateway at once. Try a shorter start of the story.", detail };
    case 422:
      return { message: `Please check ${err.field ? fieldName(err.field) : "the settings"}: ${err.message}`, detail };
    case 429:
      return { message: `The gateway is busy writing other stories.${wait}`, detail };
    case 503:
    case 504:
      // The gateway names the model in words and says what to do: say just that.
      if (NAMES_A_MODEL.test(err.message)) return { message: err.message, detail: `HTTP ${err.status}` };
      return { message: `A model is not answering right now.${wait}`, detail };
    default:
      if (err.midStream) return { message: "The story stopped early: a model stopped answering. Your story so far is kept.", detail };
      return { message: "The gateway could not write this story.", detail };
  }
}

const NAMES = { prompt: "the start of the story", max_new_tokens: "Length (word pieces)", temperature: "Temperature",
                top_k: "Top-k", top_p: "Top-p", seed: "Seed", blend: "Blend", logic_weight: "the mix",
                draft: "the draft", context: "the context", sensitivity: "Sensitivity" };

function fieldName(field) {
  return NAMES[field] || field;
}
