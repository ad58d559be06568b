// Sign-in and the device list. Text from the server is only ever set as textContent.
"use strict";
const { api, setCsrf, el } = portcullis;

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
  return [d.name, ...d.addresses, ...Object.entries(d.tags).map(([k, v]) => `${k}:${v}`), d.cluster, d.status,
    d.agent, g.name, g.vmid, g.kind, g.node].filter((x) => x !== undefined && x !== null).join(" ").toLowerCase();
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
  tr.append(nameCell(d.name, d.name), el("td", d.cluster || ""), el("td", d.status || ""), el("td", d.agent || ""),
    el("td", d.addresses.join(", ")), tagsCell(d.tags), hardwareCell(d.hardware));
  const select = el("select", null, { "aria-label": `login on ${d.name}` });
  for (const login of d.logins) select.append(el("option", login, { value: login }));
  const tdLogin = el("td");
  tdLogin.append(select);
  const open = el("button", "Open console", { type: "button", "data-device": d.name });
  open.addEventListener("click", () => {
    const q = new URLSearchParams({ device: d.name, login: select.value });
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
    el("td", d.status || ""), el("td", d.agent || ""), el("td", `on ${g.node}`), tagsCell(d.tags), el("td", "—"));
  const why = el("td", d.console_unavailable || "", { colspan: "2", class: "muted" });
  tr.append(why);
  return tr;
}

// Nodes in name order, each followed by its guests; guests whose node is not in the list
// under a heading naming their cluster and PVE node.
// The node order the table's headers choose (guests stay under their node).
const sortKeys = { name: (d) => d.name, cluster: (d) => d.cluster || "", status: (d) => d.status || "", agent: (d) => d.agent || "" };
let sortBy = { key: "name", descending: false };

function deviceRows(devices) {
  const key = sortKeys[sortBy.key];
  const nodes = devices.filter((d) => !d.guest)
    .sort((a, b) => key(a).localeCompare(key(b)) * (sortBy.descending ? -1 : 1) || a.name.localeCompare(b.name));
  const listed = new Set(nodes.map((d) => d.name));
  const rows = [];
  for (const n of nodes) {
    rows.push({ tr: nodeRow(n), text: searchText(n), group: n.name, head: true });
    for (const g of devices.filter((d) => d.guest && d.guest.parent === n.name)) {
      rows.push({ tr: guestRow(g), text: searchText(g), group: n.name });
    }
  }
  const orphans = new Map();
  for (const g of devices.filter((d) => d.guest && !listed.has(d.guest.parent))) {
    const key = `${g.cluster} / ${g.guest.node}`;
    if (!orphans.has(key)) orphans.set(key, []);
    orphans.get(key).push(g);
  }
  for (const [key, guests] of orphans) {
    const tr = el("tr", null, { class: "group" });
    tr.append(el("td", `${key} (node not in your list)`, { colspan: "9" }));
    rows.push({ tr, text: key.toLowerCase(), group: key, head: true });
    for (const g of guests) rows.push({ tr: guestRow(g), text: searchText(g), group: key });
  }
  return rows;
}

// Every search word must appear in a row; a heading stays when it or any of its guests
// matches, and a guest stays when its heading matches.
function applySearch(rows, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  const hit = (r) => words.every((w) => r.text.includes(w));
  const groups = new Set(rows.filter(hit).map((r) => r.group));
  const heads = new Set(rows.filter((r) => r.head && hit(r)).map((r) => r.group));
  let shown = 0;
  for (const r of rows) {
    const visible = r.head ? groups.has(r.group) : hit(r) || heads.has(r.group);
    r.tr.hidden = !visible;
    if (visible) shown += 1;
  }
  document.getElementById("devices-none-match").hidden = shown > 0 || rows.length === 0;
}

async function showDevices(me) {
  document.getElementById("signin").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("whoami").textContent = me.username;
  // Only for someone who may see at least one admin view (the CA checks each call).
  const adminViews = ["audit.read", "sessions.kill", "nodes.manage", "policy.manage", "users.manage"];
  document.getElementById("admin-link").hidden = !(me.permissions || []).some((p) => adminViews.includes(p));
  const devices = await api("/v1/console/devices");
  const search = document.getElementById("device-search");
  const render = () => {
    const rows = deviceRows(devices);
    document.getElementById("device-rows").replaceChildren(...rows.map((r) => r.tr));
    search.oninput = () => applySearch(rows, search.value);
    applySearch(rows, search.value);
    for (const th of document.querySelectorAll("#devices th[data-sort]")) {
      const on = th.dataset.sort === sortBy.key;
      th.setAttribute("aria-sort", on ? (sortBy.descending ? "descending" : "ascending") : "none");
    }
  };
  for (const th of document.querySelectorAll("#devices th[data-sort]")) {
    th.onclick = () => {
      sortBy = { key: th.dataset.sort, descending: sortBy.key === th.dataset.sort && !sortBy.descending };
      render();
    };
  }
  render();
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
  try {
    await showDevices(await api("/v1/auth/whoami"));
  } catch (e) {
    if (e.status === 401) return showSignin();
    document.getElementById("login-error").textContent = e.message;
    return showSignin();
  }
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
    if (!r.ok) throw new Error(data.message || `HTTP ${r.status}`);
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
