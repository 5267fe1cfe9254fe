// The API helper. The browser is authenticated by an HttpOnly session cookie
// the app never sees; changes carry the session's CSRF token.

let csrfToken = null;
let onUnauthorized = () => {};

export function setCsrf(token) { csrfToken = token || null; }
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export class ApiError extends Error {
  constructor(status, code, message, requestId, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.body = body;
  }
}

/** `?a=1&b=2` from an object, leaving out empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  }
  const t = p.toString();
  return t ? `?${t}` : '';
}

export const enc = encodeURIComponent;

/**
 * api('GET', '/v1/tasks', {query: {status}}) / api('POST', path, {body}).
 * Resolves with the parsed JSON (null for 204); rejects with ApiError whose
 * message is the server's `error.message`. A 401 sends the user to sign-in.
 */
export async function api(method, path, opts = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  if (opts.raw !== undefined) {
    // A body sent as it is, e.g. a TOML agent config.
    headers['Content-Type'] = opts.contentType;
    init.body = opts.raw;
  } else if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(path + qs(opts.query), init);
  } catch (e) {
    throw new ApiError(0, 'network', `Cannot reach the server (${e.message}).`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = (data && data.error) || {};
    let msg = err.message || `${res.status} ${res.statusText || 'error'}`;
    if (res.status === 429) {
      const after = res.headers.get('Retry-After');
      if (after && !/retry/i.test(msg)) msg += ` (retry in ${after} s)`;
    }
    const e = new ApiError(res.status, err.code || `http_${res.status}`, msg, err.request_id, data);
    if (res.status === 401 && !opts.noAuthRedirect) onUnauthorized();
    throw e;
  }
  return data;
}

export const get = (path, query) => api('GET', path, { query });
export const post = (path, body, query) => api('POST', path, { body, query });
export const put = (path, body, query) => api('PUT', path, { body, query });
export const del = (path, query) => api('DELETE', path, { query });
