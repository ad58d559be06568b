// A device's details page (`/ui/device?name=…`): identity, pinned host keys, hardware
// with its changes, who may do what, sessions, and Open console with the login choice.
// Text from the server is only ever set as textContent.
"use strict";
const { api, el, when, ago, duration, words, bytes, timeCell } = portcullis;

const name = new URLSearchParams(location.search).get("name") || "";

// `<dt>label</dt><dd>value</dd>` pairs, skipping empty values.
function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [label, value] of pairs) {
    if (value === undefined || value === null || value === "" || (Array.isArray(value) && !value.length)) continue;
    dl.append(el("dt", label), el("dd", Array.isArray(value) ? value.join(", ") : value));
  }
}

function tags(t) {
  return Object.entries(t || {}).sort().map(([k, v]) => (v === "true" ? k : `${k}=${v}`));
}

function showOpen(d) {
  const form = document.getElementById("open-form");
  const why = document.getElementById("open-unavailable");
  if (d.logins.length) {
    const select = document.getElementById("open-login");
    select.replaceChildren(...d.logins.map((l) => el("option", l, { value: l })));
    form.hidden = false;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams({ device: d.name, login: select.value });
      portcullis.intend(`console?${q}`);
      location.assign(`/ui/console?${q}`);
    });
  } else {
    why.textContent = d.console_unavailable || "No console login is granted to you here.";
    why.hidden = false;
  }
}

function showIdentity(details) {
  const d = details.device;
  const n = details.node || {};
  const g = d.guest;
  facts(document.getElementById("identity"), [
    ["Name", d.name],
    ["Kind", g ? (g.kind === "lxc" ? "Proxmox VE container" : "Proxmox VE virtual machine") : n.type],
    ["VMID", g && g.vmid],
    ["Name in Proxmox VE", g && g.name],
    ["Runs on", g && (g.parent || g.node)],
    ["Addresses", d.addresses],
    ["SSH port", n.ssh_port],
    ["Agent", d.agent],
    ["Last seen", d.last_seen ? `${ago(d.last_seen)} (${when(d.last_seen)})` : (g ? null : "never")],
    ["Cluster", d.cluster],
    ["Status", d.status],
    ["Tags", tags(d.tags)],
    ["Vendor", n.vendor],
    ["Operating system", n.os],
    ["SSH server", n.sshd_version],
    ["Partition", n.partition],
  ]);
  const keys = n.host_keys || [];
  document.getElementById("host-keys").replaceChildren(...keys.map((k) => {
    const tr = el("tr");
    tr.append(el("td", k.algorithm), el("td", k.fingerprint, { class: "mono" }));
    return tr;
  }));
  document.getElementById("host-keys-section").hidden = !keys.length;
}

// One discovery change in words: "nic.eno1.speed_mbps: 1000 → 10000".
function change(c) {
  if (c.change === "added") return `+ ${c.field}: ${c.value}`;
  if (c.change === "removed") return `− ${c.field}: ${c.value}`;
  return `~ ${c.field}: ${c.old} → ${c.new}`;
}

function showHardware(inv) {
  if (!inv) return;
  document.getElementById("hardware-section").hidden = false;
  const run = inv.last_run_at ? `Last discovery ${when(inv.last_run_at)} (${inv.last_result || "running"})` : "";
  const since = inv.changed_at ? `; as shown since ${when(inv.changed_at)}` : "";
  document.getElementById("hardware-run").textContent = run + since;
  facts(document.getElementById("hardware"), Object.entries(inv.facts).sort());
  document.getElementById("hardware-history").replaceChildren(...inv.history.map((h) => {
    const tr = el("tr");
    tr.append(timeCell(h.at), el("td", h.changes.map(change).join("\n"), { class: "details" }));
    return tr;
  }));
  document.getElementById("hardware-no-history").hidden = inv.history.length > 0;
}

const purposes = { ssh_login: "SSH login", console_access: "Browser console", inventory_enrichment: "Hardware discovery" };

function showAccess(details) {
  document.getElementById("rules").replaceChildren(...details.rules.map((r) => {
    const tr = el("tr", null, { "data-purpose": r.purpose });
    const rule = r.rule ? `${r.rule}${r.recorded ? " (sessions are recorded)" : ""}` : "none: nothing of this kind reaches the device";
    tr.append(el("td", purposes[r.purpose] || words(r.purpose)), el("td", rule));
    return tr;
  }));
  document.getElementById("access-scope").textContent = details.access_complete
    ? "Every role that targets this device, and who holds it (deny statements can still remove a login)."
    : "Your roles that target this device.";
  document.getElementById("access").replaceChildren(...details.access.map((a) => {
    const tr = el("tr", null, { "data-role": a.role, class: a.yours ? "yours" : "" });
    const held = a.holders ? a.holders.join(", ") || "nobody" : "you";
    tr.append(el("td", a.yours ? `${a.role} (yours)` : a.role), el("td", a.logins.join(", ") || "—"),
      el("td", a.permissions.join(", ") || "—"), el("td", `${duration(a.idle_secs)} / ${duration(a.absolute_secs)}`),
      el("td", held));
    return tr;
  }));
}

function showSessions(details) {
  document.getElementById("sessions-scope").textContent = details.sessions_of_everyone
    ? "Everyone's sessions: live ones first, then the most recent closed ones."
    : "Your sessions: live ones first, then the most recent closed ones.";
  document.getElementById("sessions").replaceChildren(...details.sessions.map((s) => {
    const tr = el("tr", null, { "data-session": s.session_id, class: s.ended_at ? "" : "live" });
    const end = s.ended_at || Date.now() / 1000;
    tr.append(el("td", s.user), el("td", s.login || "—"), el("td", words(s.mode)), el("td", s.client_ip),
      timeCell(s.started_at), s.ended_at ? timeCell(s.ended_at) : el("td", "live"),
      el("td", duration(end - s.started_at)), el("td", s.reason ? words(s.reason) : ""),
      el("td", `${bytes(s.bytes_from_client)} / ${bytes(s.bytes_to_client)}`));
    return tr;
  }));
  document.getElementById("sessions-none").hidden = details.sessions.length > 0;
}

async function start() {
  try {
    const details = await api(`/v1/console/devices/${encodeURIComponent(name)}`);
    const d = details.device;
    document.title = `${d.name} — Portcullis`;
    document.getElementById("device-name").textContent = d.name;
    document.getElementById("device-summary").textContent =
      [d.cluster && `cluster ${d.cluster}`, d.status,
        d.agent && `through agent ${d.agent} (${d.agent_connected ? "connected" : "not connected to any bastion"})`]
        .filter(Boolean).join(" · ");
    showOpen(d);
    showIdentity(details);
    showHardware(details.inventory);
    showAccess(details);
    showSessions(details);
    document.getElementById("device").hidden = false;
  } catch (e) {
    if (e.status === 401) return location.assign("/ui/");
    document.getElementById("device-error").textContent = e.status === 404
      ? `No device called “${name}” is available to you. Go back to the device list to pick one.`
      : e.message;
  }
}

start();
