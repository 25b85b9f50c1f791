// The gateway's HTTP API as the page uses it, with its errors turned into one shape.
//
// Every failure becomes an ApiError carrying the HTTP status (0 when the gateway could not
// be reached) and the gateway's own message, so the page can say what went wrong.

import { readEvents } from "./sse.js";

export class ApiError extends Error {
  constructor(status, message, field = null, { retryAfter = null, code = null, midStream = false } = {}) {
    super(message);
    this.status = status;
    this.field = field;
    this.retryAfter = retryAfter;  // seconds, from a 429's or 503's Retry-After
    this.code = code;
    this.midStream = midStream;  // the story had started: what was written is kept
  }
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let field = null;
  let code = null;
  try {
    const body = await response.json();
    // The gateway answers {"error": {"message", "type", "param", "code"}} (OpenAI's shape) on every failure.
    if (body && body.error) {
      message = body.error.message || message;
      field = body.error.param || null;
      code = body.error.code || null;
    }
  } catch {
    // Not JSON (a proxy's page, say): keep the status line.
  }
  const after = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, message, field, { retryAfter: after > 0 ? Math.ceil(after) : null, code });
}

// A gateway started with an API key wants it on every API call (the page itself is public).
// The key lives in this tab's sessionStorage only: it is gone when the tab closes.
const KEY_STORE = "plotarmour.apiKey";

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function post(path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream", ...authHeaders() },
      body: JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "cannot reach the gateway (is it running?)");
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** Start a streamed generation; yields the gateway's events ({type: "start"|"token"|"end"|"error", ...}). */
export async function* generateStream(request, signal) {
  const response = await post("/generate_stream", request, signal);
  for await (const { event, data } of readEvents(response)) {
    const ev = JSON.parse(data);
    ev.type = ev.type || event;
    yield ev;
  }
}

/** Change a running generation's weight from its next token; null when it has already finished. */
export async function steer(id, logicWeight) {
  try {
    const response = await post(`/generations/${encodeURIComponent(id)}`, { logic_weight: logicWeight });
    return response.json();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

/** The model servers a running generation is waiting for (["gpt2"], ["bdh"], both or none);
 *  null when it is unknown (finished, or the gateway cannot be reached). Never throws. */
export async function waitingFor(id) {
  try {
    const response = await fetch(`/generations/${encodeURIComponent(id)}`, { cache: "no-store", headers: authHeaders() });
    return response.ok ? (await response.json()).waiting_for : null;
  } catch {
    return null;
  }
}

export async function validate(request) {
  return (await post("/validate", request)).json();
}

/** {ready: bool, problems: [...]} (problems only with the API key); never throws. */
export async function readiness() {
  try {
    const response = await fetch("/ready", { cache: "no-store", headers: authHeaders() });
    const body = await response.json();
    return { ready: response.ok && body.ready, problems: body.problems || [] };
  } catch {
    return { ready: false, problems: ["cannot reach the gateway"] };
  }
}

export async function info() {
  try {
    const response = await fetch("/info", { cache: "no-store", headers: authHeaders() });
    return response.ok ? response.json() : null;
  } catch {
    return null;
  }
}
