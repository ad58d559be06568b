// Sign-in and the device list. Text from the server is only ever set as textContent.
"use strict";
const { api, setCsrf, el, timeCell } = portcullis;

// Hardware facts from discovery (`system.*`, `chassis.*`, `nic.NAME.*`): a one-line
// summary, everything else behind a disclosure.
function hardwareCell(hw) {
  const td = el("td", null, { class: "hardware" });
  if (!hw || !Object.keys(hw).length) {
    td.textContent = "—";
    return td;
  }
  const summary = [hw["system.manufacturer"], hw["system.product"]].filter(Boolean).join(" ");
  const serial = hw["system.serial"] ? ` · S/N ${hw["system.serial"]}` : "";
  const nics = new Set(Object.keys(hw).filter((k) => k.startsWith("nic.")).map((k) => k.split(".")[1]));
  const details = el("details");
  details.append(el("summary", `${summary || "hardware"}${serial} · ${nics.size} NIC(s)`));
  const list = el("dl");
  for (const [k, v] of Object.entries(hw).sort()) list.append(el("dt", k), el("dd", v));
  details.append(list);
  td.append(details);
  return td;
}

// What a search matches on a row: name, addresses, tags, cluster, status, and a
// guest's PVE name, VMID and kind.
function searchText(d) {
  const g = d.guest || {};
  const agentState = d.agent ? (d.agent_connected ? "up" : "down") : null;
  return [d.name, ...d.addresses, ...Object.entries(d.tags).map(([k, v]) => `${k}:${v}`), d.cluster, d.status,
    d.agent, agentState, g.name, g.vmid, g.kind, g.node].filter((x) => x !== undefined && x !== null).join(" ").toLowerCase();
}

// The agent and whether a bastion has it connected now (a console through an agent
// that is down cannot open).
function agentCell(d) {
  const td = el("td");
  if (!d.agent) return td;
  td.append(d.agent, " ", el("span", d.agent_connected ? "up" : "down",
    { class: d.agent_connected ? "state up" : "state down" }));
  return td;
}

// Tags as `key=value` chips (PVE tags of a guest are `tag=true`: shown as the tag).
function tagsCell(tags) {
  const td = el("td", null, { class: "tags" });
  for (const [k, v] of Object.entries(tags || {}).sort()) td.append(el("span", v === "true" ? k : `${k}=${v}`, { class: "tag" }));
  return td;
}

// The device's name, linking to its details page.
function nameCell(name, text) {
  const td = el("td");
  td.append(el("a", text, { href: `/ui/device?${new URLSearchParams({ name })}`, title: name }));
  return td;
}

function nodeRow(d) {
  const tr = el("tr", null, { "data-device": d.name });
  tr.append(nameCell(d.name, d.name), el("td", d.cluster || ""), el("td", d.status || ""), agentCell(d),
    d.last_seen ? timeCell(d.last_seen) : el("td", "never", { class: "muted" }),
    el("td", d.addresses.join(", ")), tagsCell(d.tags), hardwareCell(d.hardware));
  const select = el("select", null, { "aria-label": `login on ${d.name}` });
  for (const login of d.logins) select.append(el("option", login, { value: login }));
  const tdLogin = el("td");
  tdLogin.append(select);
  const open = el("button", "Open console", { type: "button", "data-device": d.name });
  open.addEventListener("click", () => {
    const q = new URLSearchParams({ device: d.name, login: select.value });
    portcullis.intend(`console?${q}`);
    location.assign(`/ui/console?${q}`);
  });
  const tdOpen = el("td");
  tdOpen.append(open);
  tr.append(tdLogin, tdOpen);
  return tr;
}

// A Proxmox VE guest, nested under its node: no console here, and the row says why.
function guestRow(d) {
  const g = d.guest;
  const tr = el("tr", null, { class: "guest", "data-device": d.name, "data-parent": g.parent || "" });
  const kind = g.kind === "lxc" ? "CT" : "VM";
  tr.append(nameCell(d.name, `${kind} ${g.vmid} · ${g.name}`), el("td", d.cluster || ""),
    el("td", d.status || ""), agentCell(d), el("td", ""), el("td", `on ${g.node}`), tagsCell(d.tags), el("td", "—"));
  const why = el("td", d.console_unavailable || "", { colspan: "2", class: "muted" });
  tr.append(why);
  return tr;
}

// The list is a model of entries (no DOM) from which only the page on screen is built:
// 5,000 devices cost one pass of string matching per keystroke, not 5,000 table rows.
// An entry: `{ device, text, group, head, tr? }` — `group` ties a guest to its node's
// entry (or to a heading for guests whose node is not listed), `head` marks that entry.
const PAGE = 100;
const sortKeys = { name: (d) => d.name, cluster: (d) => d.cluster || "", status: (d) => d.status || "", agent: (d) => d.agent || "" };
let sortBy = { key: "name", descending: false };
// "" (no grouping), "cluster" or "agent": nodes are ordered by it first, and each group
// starts with a heading row.
let groupBy = "";
let page = 0;
const groupOf = (d) => (groupBy ? d[groupBy] || `no ${groupBy}` : "");

// Nodes in the chosen order, each followed by its guests; guests whose node is not in
// the list under a heading naming their cluster and PVE node.
function deviceEntries(devices) {
  const key = sortKeys[sortBy.key];
  const nodes = devices.filter((d) => !d.guest)
    .sort((a, b) => groupOf(a).localeCompare(groupOf(b))
      || key(a).localeCompare(key(b)) * (sortBy.descending ? -1 : 1) || a.name.localeCompare(b.name));
  const guestsOf = new Map();
  for (const g of devices.filter((d) => d.guest)) {
    const parent = g.guest.parent || "";
    if (!guestsOf.has(parent)) guestsOf.set(parent, []);
    guestsOf.get(parent).push(g);
  }
  const entries = [];
  for (const n of nodes) {
    entries.push({ device: n, text: searchText(n), group: n.name, head: true });
    for (const g of guestsOf.get(n.name) || []) entries.push({ device: g, text: searchText(g), group: n.name });
  }
  const listed = new Set(nodes.map((d) => d.name));
  const orphans = new Map();
  for (const g of devices.filter((d) => d.guest && !listed.has(d.guest.parent))) {
    const heading = `${g.cluster} / ${g.guest.node}`;
    if (!orphans.has(heading)) orphans.set(heading, []);
    orphans.get(heading).push(g);
  }
  for (const [heading, guests] of orphans) {
    entries.push({ heading, text: heading.toLowerCase(), group: heading, head: true });
    for (const g of guests) entries.push({ device: g, text: searchText(g), group: heading });
  }
  return entries;
}

function rowOf(entry) {
  if (!entry.tr) {
    if (entry.heading) {
      entry.tr = el("tr", null, { class: "group" });
      entry.tr.append(el("td", `${entry.heading} (node not in your list)`, { colspan: "10" }));
    } else {
      entry.tr = entry.device.guest ? guestRow(entry.device) : nodeRow(entry.device);
    }
  }
  return entry.tr;
}

// Every search word must appear in an entry; a heading stays when it or any of its
// guests matches, and a guest stays when its heading matches.
function matching(entries, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return entries;
  const hit = (e) => words.every((w) => e.text.includes(w));
  const groups = new Set(entries.filter(hit).map((e) => e.group));
  const heads = new Set(entries.filter((e) => e.head && hit(e)).map((e) => e.group));
  return entries.filter((e) => (e.head ? groups.has(e.group) : hit(e) || heads.has(e.group)));
}

// The page on screen, and "41–60 of 5,000" with Previous/Next.
function renderPage(shown, total) {
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  page = Math.min(page, pages - 1);
  const slice = shown.slice(page * PAGE, (page + 1) * PAGE);
  const rows = [];
  let group = null;
  for (const entry of slice) {
    if (groupBy && entry.device && !entry.device.guest && groupOf(entry.device) !== group) {
      group = groupOf(entry.device);
      const heading = el("tr", null, { class: "group" });
      heading.append(el("th", `${groupBy === "cluster" ? "Cluster" : "Agent"}: ${group}`, { colspan: "10", scope: "rowgroup" }));
      rows.push(heading);
    }
    rows.push(rowOf(entry));
  }
  document.getElementById("device-rows").replaceChildren(...rows);
  const from = shown.length ? page * PAGE + 1 : 0;
  const of = shown.length === total ? `${total}` : `${shown.length} matching (of ${total})`;
  document.getElementById("device-count").textContent = `${from}–${page * PAGE + slice.length} of ${of}`;
  const [prev, next] = [document.getElementById("device-prev"), document.getElementById("device-next")];
  prev.disabled = page === 0;
  next.disabled = page >= pages - 1;
  prev.hidden = next.hidden = pages === 1;
  document.getElementById("device-pager").hidden = total === 0;
  document.getElementById("devices-none-match").hidden = shown.length > 0 || total === 0;
}

async function showDevices(me) {
  document.getElementById("signin").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("whoami").textContent = me.username;
  // Only for someone who may see at least one admin view (the CA checks each call).
  const adminViews = ["audit.read", "sessions.kill", "nodes.manage", "policy.manage", "users.manage", "recordings.read"];
  document.getElementById("admin-link").hidden = !(me.permissions || []).some((p) => adminViews.includes(p));
  const devices = await api("/v1/console/devices");
  const search = document.getElementById("device-search");
  let entries = deviceEntries(devices);
  let shown = entries;
  const show = () => renderPage(shown, entries.filter((e) => e.device).length);
  const filter = () => {
    shown = matching(entries, search.value);
    page = 0;
    show();
  };
  search.oninput = filter;
  document.getElementById("device-group").onchange = (ev) => {
    groupBy = ev.target.value;
    entries = deviceEntries(devices);
    filter();
  };
  document.getElementById("device-prev").onclick = () => { page -= 1; show(); };
  document.getElementById("device-next").onclick = () => { page += 1; show(); };
  for (const th of document.querySelectorAll("#devices th[data-sort]")) {
    th.onclick = () => {
      sortBy = { key: th.dataset.sort, descending: sortBy.key === th.dataset.sort && !sortBy.descending };
      for (const other of document.querySelectorAll("#devices th[data-sort]")) {
        const on = other.dataset.sort === sortBy.key;
        other.setAttribute("aria-sort", on ? (sortBy.descending ? "descending" : "ascending") : "none");
      }
      entries = deviceEntries(devices);
      filter();
    };
  }
  filter();
  document.getElementById("devices-empty").hidden = devices.length > 0;
  document.getElementById("devices").hidden = false;
}

async function showSignin() {
  document.getElementById("signin").hidden = false;
  try {
    const methods = await api("/v1/auth/methods");
    document.getElementById("sso").hidden = !methods.oidc;
  } catch (_) { /* password sign-in stays */ }
}

async function start() {
  // `?fresh=1` (from a console a step-up rule refused): end this session and sign in
  // again — with single sign-on, the identity provider asks for the password again.
  // Only when the console's own link led here: a link from elsewhere signs no one out.
  const fresh = new URLSearchParams(location.search).get("fresh") === "1";
  if (fresh && !portcullis.intended("fresh")) history.replaceState(null, "", "/ui/");
  else if (fresh) {
    try { await api("/v1/auth/logout", { method: "POST", body: {} }); } catch (_) { /* not signed in */ }
    document.getElementById("sso").querySelector("a").href = "/v1/auth/oidc/login?fresh=1";
    document.getElementById("login-error").textContent =
      "The device you chose asks for a recent sign-in: sign in again, then open its console.";
    return showSignin();
  }
  // Back from single sign-on that did not finish: the CA names only the error's code.
  const ssoError = new URLSearchParams(location.search).get("sso_error");
  if (ssoError !== null) {
    history.replaceState(null, "", "/ui/");
    document.getElementById("login-error").textContent = ssoAdvice(ssoError);
    return showSignin();
  }
  try {
    await showDevices(await api("/v1/auth/whoami"));
  } catch (e) {
    if (e.status === 401) return showSignin();
    document.getElementById("login-error").textContent = e.message;
    return showSignin();
  }
}

// A refused sign-in in words that say what to do (the CA's code picks the advice; its
// own message follows).
function signInAdvice(data, status) {
  const advice = {
    invalid_credentials: "Check the user name and password (and Caps Lock). A directory user whose name is also a local user's signs in as ldap:NAME.",
    rate_limited: "Too many attempts from here or for this user: wait, then try again.",
    unavailable: "The identity directory cannot be asked right now: try again in a minute, or ask your administrator.",
    busy: "The server is busy: try again in a few seconds.",
    idp_unavailable: "The single sign-on provider cannot be reached: try again, or sign in with a password.",
    sign_in_failed: "Ask your administrator whether your account is enabled and in the right groups.",
  }[data && data.error];
  const message = (data && data.message) || `HTTP ${status}`;
  return advice ? `${message}. ${advice}` : message;
}

// Why single sign-on came back without a session, from the code alone.
function ssoAdvice(code) {
  const advice = {
    sign_in_failed: "The sign-in expired, was already used, was started in another browser, or the identity provider refused it. Start again with the single sign-on button.",
    idp_unavailable: "The single sign-on provider cannot be reached: try again, or sign in with a password.",
    idp_invalid_answer: "The single sign-on provider gave an answer Portcullis cannot accept: ask your administrator.",
    rate_limited: "Too many sign-in attempts from here: wait a minute, then try again.",
    busy: "The server is busy: try again in a few seconds.",
    bad_request: "The provider sent the browser back with a malformed answer: start again with the single sign-on button.",
    not_found: "Single sign-on is not set up here: sign in with a password.",
  }[code];
  return `Single sign-on did not sign you in. ${advice || "Start again, or ask your administrator."}`;
}

// A one-time password (the first administrator's, or a reset) opens no session: the
// CA answers `password_change_required`, and the form asks for a new one and signs in
// again with both.
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const error = document.getElementById("login-error");
  const choose = document.getElementById("new-password");
  error.textContent = "";
  const body = { username: form.get("username"), password: form.get("password") };
  if (!choose.disabled) {
    if (form.get("new_password") !== form.get("new_password_again")) {
      error.textContent = "The two new passwords differ.";
      return;
    }
    body.new_password = form.get("new_password");
  }
  try {
    const r = await fetch("/v1/auth/browser-login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    const data = await r.json();
    if (data.error === "password_change_required") {
      choose.hidden = false;
      choose.disabled = false;
      choose.querySelector("input").focus();
      return;
    }
    if (!r.ok) throw new Error(signInAdvice(data, r.status));
    setCsrf(data.csrf_token);
    ev.target.reset();
    choose.hidden = true;
    choose.disabled = true;
    await showDevices(await api("/v1/auth/whoami"));
  } catch (e) {
    error.textContent = e.message;
  }
});

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("/v1/auth/logout", { method: "POST", body: {} }); } finally { location.assign("/ui/"); }
});

start();
