// The REST API client: every call the dashboard makes goes through here.
export const API = "/api/v1";

/** An API problem (RFC 9457): status, code, detail and, when one input is at fault, field. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `request failed (HTTP ${status})`);
    this.status = status;
    this.code = (body && body.code) || "error";
    this.field = (body && body.field) || null;
    this.correlationId = (body && body.correlation_id) || null;
  }
}

let onUnauthorized = () => {};
/** What to do when a signed-in call answers 401 (the session ended): set by the app shell. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

// Requests a repeat cannot double (GET, PUT, DELETE) are tried again when the network drops
// them (a phone changing networks, a laptop waking up); a POST is never sent twice.
const IDEMPOTENT = new Set(["GET", "HEAD", "PUT", "DELETE"]);
const RETRY_MS = [300, 1000, 2500];

async function send(method, url, init) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await fetch(url, init);
    } catch (e) {
      if (!IDEMPOTENT.has(method) || attempt >= RETRY_MS.length) {
        throw new ApiError(0, { code: "network", detail: "Homeport did not answer: check your connection and try again." });
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS[attempt]));
    }
  }
}

/** Call the API; resolves to the JSON answer (null for 204), rejects with ApiError. */
export async function api(method, path, body, { quiet401 = false } = {}) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await send(method, API + path, init);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    if (response.status === 401 && !quiet401) onUnauthorized();
    throw new ApiError(response.status, data);
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body, opts);
export const patch = (path, body, opts) => api("PATCH", path, body, opts);
export const put = (path, body, opts) => api("PUT", path, body, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

/** `path?k=v...` leaving out empty values. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** Follow a Server-Sent Events route; returns a function that stops following. */
export function follow(path, handlers) {
  const source = new EventSource(API + path, { withCredentials: true });
  for (const [name, fn] of Object.entries(handlers)) {
    if (name === "error") continue;
    source.addEventListener(name, (ev) => {
      let data = ev.data;
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        /* a plain line */
      }
      fn(data, ev);
    });
  }
  source.onerror = (ev) => handlers.error && handlers.error(ev, source);
  return () => source.close();
}
