// The admin page: one tab per view, each shown only to someone holding a permission it
// needs (the CA checks every call again). Views register here; `admin-fleet.js` and
// `admin-policy.js` add theirs. The tab in the URL's fragment (`#audit`) opens first.
// Text from the server is only ever set as textContent.
"use strict";
const portcullisAdmin = (() => {
  const { api, el, when, duration, words, bytes, timeCell } = portcullis;
  const views = [];

  // `{ id, title, needs: [permission…], load(), refresh? }`: `load` runs when the tab
  // is first opened, `refresh` every 5 s while it is open.
  function register(view) { views.push(view); }

  function fail(id, e) { document.getElementById(id).textContent = e ? e.message : ""; }

  // A button that asks before it acts, then reports failures in `errorId`.
  function confirmButton(text, question, errorId, action) {
    const b = el("button", text, { type: "button" });
    b.addEventListener("click", async () => {
      if (!confirm(question)) return;
      fail(errorId, null);
      try { await action(); } catch (e) { fail(errorId, e); }
    });
    return b;
  }

  function cell(...children) {
    const td = el("td");
    td.append(...children);
    return td;
  }

  // "a, b" → ["a", "b"]; "k=v, k2=v2" → {k: v, k2: v2}.
  const list = (text) => String(text || "").split(",").map((s) => s.trim()).filter(Boolean);
  function pairs(text) {
    const out = {};
    for (const item of list(text)) {
      const at = item.indexOf("=");
      if (at < 1) throw new Error(`“${item}” is not key=value`);
      out[item.slice(0, at).trim()] = item.slice(at + 1).trim();
    }
    return out;
  }

  // ---- Live sessions ----
  async function sessions() {
    try {
      const live = await api("/v1/admin/sessions");
      const now = Date.now() / 1000;
      document.getElementById("sessions").replaceChildren(...live.map((s) => {
        const tr = el("tr", null, { "data-session": s.session_id });
        const ask = `End ${s.user}'s ${s.mode} session on ${s.device}${s.login ? ` as ${s.login}` : ""}? ` +
          "They are told an administrator closed it.";
        const kill = s.kill_requested ? el("span", "closing…", { class: "muted" })
          : confirmButton("Kill", ask, "sessions-error", async () => {
            await api(`/v1/admin/sessions/${encodeURIComponent(s.session_id)}/kill`, { method: "POST", body: {} });
            setTimeout(sessions, 1500);
          });
        tr.append(el("td", s.user), el("td", s.device), el("td", s.login || "—"), el("td", words(s.mode)),
          el("td", s.client_ip), el("td", s.bastion), timeCell(s.opened_at), el("td", duration(now - s.opened_at)),
          el("td", `${bytes(s.bytes_from_client)} / ${bytes(s.bytes_to_client)}`), cell(kill));
        return tr;
      }));
      document.getElementById("sessions-none").hidden = live.length > 0;
      fail("sessions-error", null);
    } catch (e) { fail("sessions-error", e); }
  }
  register({ id: "sessions", title: "Sessions", needs: ["audit.read", "sessions.kill"], load: sessions, refresh: sessions });

  // ---- Recordings ----
  async function recordings() {
    try {
      const form = new FormData(document.getElementById("recordings-filter"));
      const query = new URLSearchParams();
      for (const key of ["user", "device"]) if (form.get(key)) query.set(key, form.get(key).trim());
      const all = await api(`/v1/admin/recordings?${query}`);
      document.getElementById("recordings").replaceChildren(...all.map((r) => {
        const tr = el("tr", null, { "data-recording": r.session_id });
        const notes = [];
        if (r.input_recorded) notes.push("keystrokes");
        if (r.truncated) notes.push("cut at the limit");
        if (r.incomplete) notes.push("end missing");
        if (r.ended_at === undefined || r.ended_at === null) notes.push("live");
        const play = el("a", "Play", { href: `/ui/recording?session=${encodeURIComponent(r.session_id)}` });
        const download = el("a", "Download", { href: `/v1/admin/recordings/${encodeURIComponent(r.session_id)}`, download: "" });
        tr.append(el("td", r.user), el("td", r.device), el("td", r.login || "—"), el("td", words(r.mode)),
          timeCell(r.started_at), el("td", bytes(r.bytes)), el("td", notes.join(", ") || "—"), cell(play, " ", download));
        return tr;
      }));
      document.getElementById("recordings-none").hidden = all.length > 0;
      fail("recordings-error", null);
    } catch (e) { fail("recordings-error", e); }
  }
  document.getElementById("recordings-filter").addEventListener("submit", (ev) => { ev.preventDefault(); recordings(); });
  document.getElementById("recordings-filter").addEventListener("reset", () => setTimeout(recordings));
  register({ id: "recordings", title: "Recordings", needs: ["recordings.read"], load: recordings });

  // ---- Audit ----
  const PAGE = 100;
  // Who acted and on what, from the fields records use for them.
  const whoFields = ["actor", "by", "username", "user"];
  const whatFields = ["device", "node", "session_id", "name", "target"];
  const pick = (payload, fields) => fields.map((f) => payload[f]).find((v) => typeof v === "string" && v) || "";
  let filter = {};
  // The `before` cursor of each page walked so far, newest first; the last is the page
  // shown ("Older" pushes, "Newer" pops).
  let pages = [undefined];
  let shownRecords = [];

  const unix = (local) => (local ? String(Math.floor(new Date(local).getTime() / 1000)) : "");

  async function audit() {
    const before = pages[pages.length - 1];
    try {
      const q = new URLSearchParams({ limit: String(PAGE), order: "desc" });
      for (const [k, v] of Object.entries(filter)) if (v) q.set(k, v);
      if (before) q.set("before", String(before));
      const records = await api(`/v1/admin/audit?${q}`);
      shownRecords = records;
      document.getElementById("audit").replaceChildren(...records.map(auditRow));
      const range = records.length ? `#${records[records.length - 1].seq}–#${records[0].seq}` : "";
      document.getElementById("audit-count").textContent =
        `${records.length} record(s), newest first${range ? ` (${range})` : ""}`;
      document.getElementById("audit-older").disabled = records.length < PAGE;
      document.getElementById("audit-newer").disabled = pages.length === 1;
      fail("audit-error", null);
    } catch (e) { fail("audit-error", e); }
  }

  function auditRow(r) {
    const tr = el("tr", null, { "data-event": r.event });
    const fields = Object.entries(r.payload).filter(([k]) => k !== "event");
    const details = el("details");
    details.append(el("summary", `${fields.length} field(s)`));
    const dl = el("dl");
    for (const [k, v] of fields) dl.append(el("dt", k), el("dd", typeof v === "string" ? v : JSON.stringify(v)));
    details.append(dl);
    tr.append(el("td", r.seq), timeCell(r.at), el("td", words(r.event), { title: r.event }),
      el("td", pick(r.payload, whoFields)), el("td", pick(r.payload, whatFields)), cell(details));
    tr.lastChild.className = "fields";
    return tr;
  }

  // Suggestions for the filters: the events, users and devices of the latest records.
  async function suggestions() {
    try {
      const recent = await api("/v1/admin/audit?limit=1000&order=desc");
      const fill = (id, values) => document.getElementById(id)
        .replaceChildren(...[...new Set(values.filter(Boolean))].sort().map((v) => el("option", null, { value: v })));
      fill("audit-events", recent.map((r) => r.event));
      fill("audit-users", recent.map((r) => pick(r.payload, whoFields)));
      fill("audit-devices", recent.map((r) => r.payload.device || r.payload.node));
    } catch (_) { /* the filters work without suggestions */ }
  }

  document.getElementById("audit-filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(ev.target));
    filter = { event: f.event, user: f.user, device: f.device, since: unix(f.from), until: unix(f.to) };
    pages = [undefined];
    audit();
  });
  document.getElementById("audit-filter").addEventListener("reset", () => {
    filter = {};
    pages = [undefined];
    audit();
  });
  document.getElementById("audit-older").addEventListener("click", () => {
    pages.push(shownRecords[shownRecords.length - 1].seq);
    audit();
  });
  document.getElementById("audit-newer").addEventListener("click", () => {
    pages.pop();
    audit();
  });

  // The records on screen as a file: JSON lines (one record per line, as the API gives
  // them) or CSV (seq, time, event, then the payload as JSON).
  function download(name, type, text) {
    const a = el("a", null, { href: URL.createObjectURL(new Blob([text], { type })), download: name });
    document.body.append(a);
    a.click();
    a.remove();
  }
  const csvCell = (v) => `"${String(v).replace(/"/g, '""')}"`;
  document.getElementById("audit-jsonl").addEventListener("click", () =>
    download("audit.jsonl", "application/x-ndjson", shownRecords.map((r) => JSON.stringify(r)).join("\n") + "\n"));
  document.getElementById("audit-csv").addEventListener("click", () => {
    const rows = [["seq", "time", "event", "payload"]].concat(
      shownRecords.map((r) => [r.seq, when(r.at), r.event, JSON.stringify(r.payload)]));
    download("audit.csv", "text/csv", rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n");
  });
  register({ id: "audit", title: "Audit", needs: ["audit.read"], load: () => { audit(); suggestions(); } });

  // ---- Local users ----
  // A one-time password made in the browser: shown once, replaced at first sign-in.
  function oneTimePassword() {
    const bytes = crypto.getRandomValues(new Uint8Array(15));
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
  }

  async function setOneTime(username) {
    const password = oneTimePassword();
    await api(`/v1/admin/users/${encodeURIComponent(username)}/password`,
      { method: "PUT", body: { password, one_time: true } });
    const out = document.getElementById("user-secret");
    out.replaceChildren(`One-time password for ${username} (shown once; they choose their own at sign-in): `,
      el("code", password, { class: "secret" }));
    out.hidden = false;
  }

  async function users() {
    try {
      const all = await api("/v1/admin/users");
      document.getElementById("users").replaceChildren(...all.map((u) => {
        const tr = el("tr", null, { "data-user": u.username });
        const groups = el("input", null, { value: u.groups.join(", "), "aria-label": `groups of ${u.username}` });
        const save = el("button", "Save groups", { type: "button" });
        save.addEventListener("click", async () => {
          try {
            await api(`/v1/admin/users/${encodeURIComponent(u.username)}/groups`,
              { method: "PUT", body: { groups: list(groups.value) } });
            users();
          } catch (e) { fail("users-error", e); }
        });
        const toggle = u.disabled
          ? confirmButton("Enable", `Let ${u.username} sign in again?`, "users-error", async () => {
            await api(`/v1/admin/users/${encodeURIComponent(u.username)}/enable`, { method: "POST", body: {} });
            users();
          })
          : confirmButton("Disable", `Disable ${u.username}? Their sign-in sessions and live sessions end.`, "users-error",
            async () => {
              await api(`/v1/admin/users/${encodeURIComponent(u.username)}/disable`, { method: "POST", body: {} });
              users();
            });
        const reset = confirmButton("One-time password", `Give ${u.username} a new one-time password?`, "users-error",
          () => setOneTime(u.username));
        tr.append(el("td", u.username), cell(groups, save), el("td", u.disabled ? "disabled" : "active"),
          cell(toggle, reset));
        return tr;
      }));
    } catch (e) { fail("users-error", e); }
  }

  document.getElementById("user-add").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    fail("users-error", null);
    try {
      await api("/v1/admin/users", { method: "POST", body: { username: f.get("username"), groups: list(f.get("groups")) } });
      await setOneTime(f.get("username"));
      ev.target.reset();
      users();
    } catch (e) { fail("users-error", e); }
  });
  register({ id: "users", title: "Users", needs: ["users.manage"], load: users });

  // ---- The tabs ----
  async function start() {
    let held = [];
    try { held = (await api("/v1/auth/whoami")).permissions || []; } catch (e) {
      if (e.status === 401) return location.assign("/ui/");
    }
    const mine = views.filter((v) => v.needs.some((p) => held.includes(p)));
    // Views the user may not see are removed, not hidden.
    for (const v of views.filter((v) => !mine.includes(v))) document.getElementById(`view-${v.id}`).remove();
    if (!mine.length) {
      document.getElementById("no-views").hidden = false;
      return;
    }
    const tabs = document.getElementById("tabs");
    const loaded = new Set();
    let timer = null;
    const open = (id) => {
      const view = mine.find((v) => v.id === id) || mine[0];
      for (const v of mine) {
        document.getElementById(`view-${v.id}`).hidden = v !== view;
        const tab = document.getElementById(`tab-${v.id}`);
        tab.setAttribute("aria-selected", String(v === view));
        tab.tabIndex = v === view ? 0 : -1;
      }
      clearInterval(timer);
      if (!loaded.has(view.id)) {
        loaded.add(view.id);
        view.load();
      } else if (view.refresh) {
        view.refresh();
      }
      if (view.refresh) timer = setInterval(view.refresh, 5000);
      if (location.hash !== `#${view.id}`) history.replaceState(null, "", `#${view.id}`);
    };
    for (const v of mine) {
      const tab = el("button", v.title, { type: "button", role: "tab", id: `tab-${v.id}`, "data-view": v.id,
        "aria-controls": `view-${v.id}` });
      tab.addEventListener("click", () => open(v.id));
      document.getElementById(`view-${v.id}`).setAttribute("aria-labelledby", `tab-${v.id}`);
      tabs.append(tab);
    }
    // Arrow keys move between tabs, as in any tab list.
    tabs.addEventListener("keydown", (ev) => {
      const i = mine.findIndex((v) => document.getElementById(`tab-${v.id}`) === document.activeElement);
      if (i < 0 || !["ArrowLeft", "ArrowRight"].includes(ev.key)) return;
      const next = mine[(i + (ev.key === "ArrowRight" ? 1 : mine.length - 1)) % mine.length];
      open(next.id);
      document.getElementById(`tab-${next.id}`).focus();
    });
    window.addEventListener("hashchange", () => open(location.hash.slice(1)));
    open(location.hash.slice(1));
  }
  document.addEventListener("DOMContentLoaded", start);

  return { register, fail, confirmButton, cell, list, pairs };
})();
