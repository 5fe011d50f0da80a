// The API as the signed-in key calls it, and what lives as long as the sign-in: the key, its
// role, the timers of the page shown.

import { say } from "./page.js";

export const session = {
  key: sessionStorage.getItem("ragway.key") || "",
  role: sessionStorage.getItem("ragway.role") || "",
  label: sessionStorage.getItem("ragway.label") || "",
  timers: [],
  /** Counts the pages shown: a timer started for an earlier page stops itself. */
  view: 0,
  notice: "",
};


export class ApiFailure extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
  describe() {
    const retry = this.retryAfter ? ` (retry after ${this.retryAfter} s)` : "";
    return `${this.status} ${this.code || ""}: ${this.message}${retry}`;
  }
}

export function authHeaders(key = session.key) {
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** Calls the API as the signed-in key; a key no longer accepted signs the console out. */
export async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) throw failure(response.status, data, response.headers.get("retry-after"));
  return data;
}

export function failure(status, data, retryAfter) {
  const detail = (data && data.error) || {};
  const error = new ApiFailure(status, detail.code, detail.message || `HTTP ${status}`, retryAfter);
  if (session.role && (status === 401 || (session.role === "operator" && status === 403))) {
    signedOut("This key is no longer accepted (revoked, or its tenant deleted): sign in again.");
  }
  return error;
}

export function fail(error) {
  if (!session.role) return; // signed out meanwhile: the sign-in page says why
  say(error instanceof ApiFailure ? error.describe() : String(error.message || error), "error");
}

export function stopTimers() {
  for (const timer of session.timers) clearInterval(timer);
  session.timers = [];
}

/** Runs `tick` now and every `ms` while this page is shown. */
export function every(ms, tick) {
  const page = session.view;
  const timer = setInterval(() => (session.view === page ? tick() : clearInterval(timer)), ms);
  session.timers.push(timer);
  tick();
}


/** What to do when the key is no longer accepted (set by the console). */
let signedOut = () => {};
export function whenSignedOut(handler) {
  signedOut = handler;
}
