// Admin views of the fleet: nodes, bastions and agents, enrollment tokens, and the
// Proxmox VE clusters (a cluster's guests on click).
"use strict";
(() => {
  const { api, el, when, timeCell } = portcullis;
  const { register, fail, confirmButton, cell, pairs } = portcullisAdmin;
  const tagText = (tags) => Object.entries(tags || {}).sort().map(([k, v]) => `${k}=${v}`).join(", ");
  const never = (unix) => (unix ? timeCell(unix) : el("td", "never"));

  // ---- Nodes ----
  async function nodes() {
    try {
      const all = await api("/v1/admin/nodes");
      document.getElementById("nodes").replaceChildren(...all.map((n) => {
        const tr = el("tr", null, { "data-node": n.name });
        const remove = confirmButton("Remove", `Remove ${n.name}? Sessions to it are refused from now on; ` +
          "re-enrolling the node brings it back.", "nodes-error", async () => {
          await api(`/v1/admin/nodes/${encodeURIComponent(n.name)}`, { method: "DELETE" });
          nodes();
        });
        // Its details page: inventory readers see every device's, console or not.
        const name = el("td");
        name.append(el("a", n.name, { href: `/ui/device?name=${encodeURIComponent(n.name)}` }));
        tr.append(name, el("td", n.type || "—"), el("td", n.addresses.join(", ")), el("td", n.agent || "—"),
          el("td", tagText(n.tags)), el("td", n.host_keys.length ? `${n.host_keys.length} pinned` : "none"),
          el("td", n.os || "—"), cell(remove));
        return tr;
      }));
    } catch (e) { fail("nodes-error", e); }
  }
  register({ id: "nodes", title: "Nodes", needs: ["nodes.manage"], load: nodes });

  // ---- Bastions and agents ----
  async function services() {
    try {
      const [bastions, agents] = await Promise.all([api("/v1/admin/bastions"), api("/v1/admin/agents")]);
      document.getElementById("bastions").replaceChildren(...bastions.map((b) => {
        const tr = el("tr", null, { "data-service": b.name });
        tr.append(el("td", b.name), el("td", b.key_fingerprint, { class: "mono" }), timeCell(b.enrolled_at),
          never(b.last_seen));
        return tr;
      }));
      document.getElementById("agents").replaceChildren(...agents.map((a) => {
        const tr = el("tr", null, { "data-service": a.name });
        tr.append(el("td", a.name), el("td", a.key_fingerprint, { class: "mono" }), timeCell(a.enrolled_at),
          never(a.last_seen), el("td", a.connected_to.join(", ") || "no bastion"));
        return tr;
      }));
    } catch (e) { fail("services-error", e); }
  }
  register({ id: "services", title: "Bastions & agents", needs: ["nodes.manage"], load: services, refresh: services });

  // ---- Enrollment tokens ----
  async function tokens() {
    try {
      const all = await api("/v1/admin/enroll-tokens");
      document.getElementById("tokens").replaceChildren(...all.map((t) => {
        const tr = el("tr", null, { "data-token": t.id });
        const revoke = confirmButton("Revoke", `Revoke token ${t.id}? It enrolls nothing more.`, "tokens-error",
          async () => {
            await api(`/v1/admin/enroll-tokens/${encodeURIComponent(t.id)}`, { method: "DELETE" });
            tokens();
          });
        // Revoked and used-up tokens stay listed (uses left 0), as do expired ones.
        const state = t.uses_left === 0 ? el("td", "used up or revoked", { class: "muted" })
          : t.expires_at <= Date.now() / 1000 ? el("td", "expired", { class: "muted" }) : cell(revoke);
        tr.append(el("td", t.id, { class: "mono" }), el("td", t.service || "nodes"), el("td", t.created_by),
          el("td", when(t.expires_at)), el("td", t.uses_left), el("td", tagText(t.tags)), el("td", t.agent || "—"),
          el("td", t.node || "—"), state);
        return tr;
      }));
    } catch (e) { fail("tokens-error", e); }
  }

  document.getElementById("token-create").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    fail("tokens-error", null);
    try {
      const body = { ttl_seconds: Number(f.get("ttl")), uses: Number(f.get("uses")), tags: pairs(f.get("tags")) };
      if (f.get("kind") !== "node") body.service = f.get("kind");
      if (f.get("agent")) body.agent = f.get("agent");
      if (f.get("node")) body.node = f.get("node");
      const made = await api("/v1/admin/enroll-tokens", { method: "POST", body });
      const out = document.getElementById("token-secret");
      const how = body.service ? `portcullisd ${body.service} --enroll-token` : "portcullis-enroll enroll --token";
      out.replaceChildren(`Token ${made.id}, valid until ${when(made.expires_at)} — shown once, use it with `,
        el("code", how), ": ", el("code", made.token, { class: "secret" }));
      out.hidden = false;
      tokens();
    } catch (e) { fail("tokens-error", e); }
  });
  register({ id: "tokens", title: "Enrollment tokens", needs: ["nodes.manage"], load: tokens });

  // ---- Proxmox VE clusters ----
  async function clusters() {
    try {
      const list = await api("/v1/admin/inventory/clusters");
      document.getElementById("clusters").replaceChildren(...list.map((c) => {
        const tr = el("tr");
        const open = el("button", c.id, { type: "button", class: "link" });
        open.addEventListener("click", () => guests(c.id));
        const quorate = c.quorate === null ? "?" : c.quorate ? "yes" : "NO";
        const last = c.last_run_at ? `${c.last_result || "running"}, ${when(c.last_run_at)}` : "";
        tr.append(cell(open), el("td", c.version), el("td", quorate), el("td", c.nodes), el("td", c.guests),
          el("td", last), el("td", c.last_endpoint_failures.join("\n"), { class: "details" }));
        return tr;
      }));
    } catch (e) { fail("clusters-error", e); }
  }

  async function guests(id) {
    try {
      const [agent, cluster] = id.split("/");
      const view = await api(`/v1/admin/inventory/clusters/${encodeURIComponent(agent)}/${encodeURIComponent(cluster)}`);
      document.getElementById("guests").replaceChildren(...view.inventory.guests.map((g) => {
        const tr = el("tr");
        tr.append(el("td", g.vmid), el("td", g.kind), el("td", g.name), el("td", g.node), el("td", g.status));
        return tr;
      }));
    } catch (e) { fail("clusters-error", e); }
  }
  register({ id: "clusters", title: "Proxmox VE", needs: ["nodes.manage", "audit.read"], load: clusters });
})();
