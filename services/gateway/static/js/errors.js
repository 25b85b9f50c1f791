// What the page says for each kind of failure: the status decides the advice, the gateway's
// own message (which names the field or the server) is kept as it is.

import { ApiError } from "./api.js";

export function describe(err) {
  if (!(err instanceof ApiError)) return `Something went wrong in the page: ${err && err.message ? err.message : err}`;
  switch (err.status) {
    case 0:
      return `Cannot reach the gateway: ${err.message}.`;
    case 401:
      return `This gateway needs an API key (401): enter it under Settings and try again.`;
    case 413:
      return `The request is too large (413): ${err.message}`;
    case 422:
      return `Please check the input (422): ${err.message}`;
    case 429:
      return `The gateway is busy (429): ${err.message}`;
    case 503:
      return `A model server is unavailable (503): ${err.message}`;
    default:
      return `The gateway answered ${err.status}: ${err.message}`;
  }
}
