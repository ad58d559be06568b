// Admin pages: live sessions (with kill), the audit log with filters, Proxmox VE clusters
// (a cluster's guests on click), the target preview (of the loaded policy, or of files not
// loaded yet), policy history (reloads and API-secret changes).
"use strict";
const { api, el, when, ago, words } = portcullis;

function fail(id, e) { document.getElementById(id).textContent = e.message; }

async function sessions() {
  try {
    const list = await api("/v1/admin/sessions");
    const body = document.getElementById("sessions");
    body.replaceChildren();
    for (const s of list) {
      const tr = el("tr");
      tr.append(el("td", s.session_id.slice(0, 12)), el("td", s.user), el("td", s.device), el("td", s.login || ""),
        el("td", s.mode), el("td", s.agent), el("td", when(s.opened_at)));
      const kill = el("button", "Kill", { type: "button" });
      kill.addEventListener("click", async () => {
        const ask = `End ${s.user}'s ${s.mode} session on ${s.device}${s.login ? ` as ${s.login}` : ""}? ` +
          "They are told an administrator closed it.";
        if (!confirm(ask)) return;
        try { await api(`/v1/admin/sessions/${encodeURIComponent(s.session_id)}/kill`, { method: "POST", body: {} }); }
        catch (e) { fail("sessions-error", e); }
        setTimeout(sessions, 1500);
      });
      const td = el("td");
      td.append(kill);
      tr.append(td);
      body.append(tr);
    }
  } catch (e) { fail("sessions-error", e); }
}

// Who acted and on what, from the fields records use for them.
const whoFields = ["actor", "by", "username", "user"];
const whatFields = ["device", "node", "session_id", "name", "target"];
const pick = (payload, fields) => fields.map((f) => payload[f]).find((v) => typeof v === "string" && v) || "";

let shownRecords = [];

async function audit(filter) {
  try {
    const q = new URLSearchParams({ limit: "200", order: "desc" });
    for (const [k, v] of Object.entries(filter || {})) if (v) q.set(k, v);
    const records = await api(`/v1/admin/audit?${q}`);
    shownRecords = records;
    const body = document.getElementById("audit");
    body.replaceChildren();
    for (const r of records) {
      const tr = el("tr", null, { "data-event": r.event });
      const time = el("td", ago(r.at), { title: when(r.at) });
      const fields = Object.entries(r.payload).filter(([k]) => k !== "event");
      const details = el("details");
      details.append(el("summary", `${fields.length} field(s)`));
      const list = el("dl");
      for (const [k, v] of fields) list.append(el("dt", k), el("dd", typeof v === "string" ? v : JSON.stringify(v)));
      details.append(list);
      const cell = el("td", null, { class: "fields" });
      cell.append(details);
      tr.append(el("td", r.seq), time, el("td", words(r.event), { title: r.event }),
        el("td", pick(r.payload, whoFields)), el("td", pick(r.payload, whatFields)), cell);
      body.append(tr);
    }
    document.getElementById("audit-count").textContent = `${records.length} record(s), newest first`;
  } catch (e) { fail("audit-error", e); }
}

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

async function policy() {
  try {
    const changes = await api("/v1/admin/policy/history");
    const body = document.getElementById("policy");
    body.replaceChildren();
    for (const c of changes) {
      const tr = el("tr");
      const fields = (c.fields || []).map((f) => `  ${f.item} ${f.field}: ${f.old ?? "(none)"} → ${f.new ?? "(none)"}`);
      const what = [["+", c.added], ["−", c.removed], ["~", c.changed]]
        .flatMap(([mark, names]) => names.map((n) => `${mark} ${n}`))
        .concat(fields)
        .join("\n");
      tr.append(el("td", when(c.at)), el("td", c.actor), el("td", c.digest_after ? c.digest_after.slice(0, 16) : "—"),
        el("td", what || "(no change)", { class: "details" }));
      body.append(tr);
    }
  } catch (e) { fail("policy-error", e); }
}

async function clusters() {
  try {
    const list = await api("/v1/admin/inventory/clusters");
    const body = document.getElementById("clusters");
    body.replaceChildren();
    for (const c of list) {
      const tr = el("tr");
      const open = el("button", c.id, { type: "button", class: "link" });
      open.addEventListener("click", () => guests(c.id));
      const name = el("td");
      name.append(open);
      const quorate = c.quorate === null ? "?" : c.quorate ? "yes" : "NO";
      const last = c.last_run_at ? `${c.last_result || "running"}, ${when(c.last_run_at)}` : "";
      tr.append(name, el("td", c.version), el("td", quorate), el("td", c.nodes), el("td", c.guests), el("td", last),
        el("td", c.last_endpoint_failures.join("\n"), { class: "details" }));
      body.append(tr);
    }
  } catch (e) { fail("clusters-error", e); }
}

async function guests(id) {
  try {
    const [agent, cluster] = id.split("/");
    const view = await api(`/v1/admin/inventory/clusters/${encodeURIComponent(agent)}/${encodeURIComponent(cluster)}`);
    const body = document.getElementById("guests");
    body.replaceChildren();
    for (const g of view.inventory.guests) {
      const tr = el("tr");
      tr.append(el("td", g.vmid), el("td", g.kind), el("td", g.name), el("td", g.node), el("td", g.status));
      body.append(tr);
    }
  } catch (e) { fail("clusters-error", e); }
}

// One row per rule; the devices behind a disclosure, each with why it is or is not in.
function previewRows(previews) {
  const body = document.getElementById("previews");
  body.replaceChildren();
  for (const p of previews) {
    const tr = el("tr", null, { "data-rule": p.rule });
    const purpose = p.provider ? `${p.purpose} (${p.provider})` : p.purpose;
    const agents = Object.entries(p.by_agent).map(([a, n]) => `${a}: ${n}`).join(", ");
    const details = el("details");
    details.append(el("summary", `${p.in_scope.length} of ${p.matched.length}`));
    const list = el("ul");
    for (const d of p.in_scope) {
      const other = p.decided_by_other_rule[d];
      list.append(el("li", other ? `${d} — rule ${other} decides (it sorts first)` : d));
    }
    for (const d of p.matched.filter((d) => !p.in_scope.includes(d))) list.append(el("li", `${d} — out of scope`));
    details.append(list);
    const devices = el("td");
    devices.append(details);
    tr.append(el("td", p.rule), el("td", purpose), el("td", p.matched.length), el("td", p.in_scope.length),
      el("td", agents || "—"), devices);
    body.append(tr);
  }
}

async function preview(files) {
  const error = document.getElementById("preview-error");
  error.textContent = "";
  try {
    const previews = files
      ? await api("/v1/admin/rules/preview", { method: "POST", body: { files } })
      : await api("/v1/admin/rules/preview");
    document.getElementById("preview-source").textContent = files
      ? `Previewing ${files.map((f) => f.name).join(", ")} (not loaded).`
      : "The loaded policy.";
    previewRows(previews);
  } catch (e) { fail("preview-error", e); }
}

document.getElementById("preview-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const chosen = [...ev.target.elements.files.files];
  if (!chosen.length) {
    document.getElementById("preview-error").textContent = "Choose one or more policy files (.toml) first.";
    return;
  }
  preview(await Promise.all(chosen.map(async (f) => ({ name: f.name, text: await f.text() }))));
});
document.getElementById("preview-loaded").addEventListener("click", () => preview(null));

document.getElementById("audit-filter").addEventListener("submit", (ev) => {
  ev.preventDefault();
  audit(Object.fromEntries(new FormData(ev.target)));
});

// Each view needs one of its permissions; one the user lacks says so instead of failing.
const views = [
  { section: "sessions", needs: ["audit.read", "sessions.kill"], load: () => { sessions(); setInterval(sessions, 5000); } },
  { section: "audit", needs: ["audit.read"], load: () => audit() },
  { section: "clusters", needs: ["nodes.manage", "audit.read"], load: () => clusters() },
  { section: "previews", needs: ["policy.manage", "audit.read"], load: () => preview(null) },
  { section: "policy", needs: ["policy.manage", "audit.read"], load: () => policy() },
];

async function start() {
  let held = [];
  try { held = (await api("/v1/auth/whoami")).permissions || []; } catch (e) {
    if (e.status === 401) return location.assign("/ui/");
  }
  for (const v of views) {
    const section = document.getElementById(v.section).closest("section");
    if (v.needs.some((p) => held.includes(p))) {
      v.load();
    } else {
      section.replaceChildren(section.querySelector("h2"),
        el("p", `Not available to you: this view needs ${v.needs.join(" or ")}.`, { class: "muted" }));
    }
  }
}

start();
