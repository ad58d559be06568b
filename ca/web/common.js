// Shared by every page: JSON calls to the CA with the session cookie, and the CSRF
// token (read from the server, kept in memory only) on every state-changing call.
"use strict";
const portcullis = (() => {
  let csrf = null;
  async function csrfToken() {
    if (csrf === null) {
      const r = await fetch("/v1/auth/csrf", { credentials: "same-origin" });
      if (!r.ok) throw new Error("not signed in");
      csrf = (await r.json()).csrf_token;
    }
    return csrf;
  }
  async function api(path, options = {}) {
    const method = options.method || "GET";
    const headers = { Accept: "application/json" };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-Token"] = options.csrf || (await csrfToken());
    const r = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    const text = await r.text();
    const data = text ? JSON.parse(text) : null;
    if (!r.ok) {
      const e = new Error((data && data.message) || `HTTP ${r.status}`);
      e.status = r.status;
      e.code = data && data.error;
      throw e;
    }
    return data;
  }
  function setCsrf(token) { csrf = token; }
  function el(tag, text, attrs = {}) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }
  function when(unix) { return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z"); }
  return { api, setCsrf, el, when };
})();
