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
  // "3 min ago" (the absolute time goes beside it, e.g. in a title).
  function ago(unix) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  // A length of time in seconds as people say it: "45 s", "12 min", "2 h 5 min".
  function duration(secs) {
    const s = Math.round(secs);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    const m = Math.floor((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${m ? ` ${m} min` : ""}`;
  }
  // A code in words: `session_kill_requested` → "Session kill requested".
  function words(code) {
    const w = String(code).replace(/_/g, " ");
    return w.charAt(0).toUpperCase() + w.slice(1);
  }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  // A time cell: relative, with the absolute time as its title.
  function timeCell(unix) { return el("td", ago(unix), { title: when(unix) }); }
  // A navigation a page of ours asked for (opening a console, signing in again), told
  // apart from a link from anywhere else (a chat, another site): a one-shot mark in this
  // tab's sessionStorage, set just before the navigation and taken by the page it leads
  // to within seconds. A page reached without it acts only on the user's click: a link
  // must not open a console on a device of its choosing, nor sign the user out.
  const INTENT = "portcullis-intent";
  function intend(what) { sessionStorage.setItem(INTENT, JSON.stringify({ what, at: Date.now() })); }
  function intended(what) {
    const raw = sessionStorage.getItem(INTENT);
    sessionStorage.removeItem(INTENT);
    try {
      const mark = JSON.parse(raw);
      return !!mark && mark.what === what && Math.abs(Date.now() - mark.at) < 30000;
    } catch (_) { return false; }
  }
  return { api, setCsrf, el, when, ago, duration, words, bytes, timeCell, intend, intended };
})();
