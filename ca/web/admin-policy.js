// Admin views of the policy: the target preview (of the loaded policy, or of files not
// loaded yet) and the policy history as a diff (reloads, refused reloads, API secrets).
"use strict";
(() => {
  const { api, el, timeCell } = portcullis;
  const { register, fail } = portcullisAdmin;

  // ---- Target preview ----
  // One row per rule; the devices behind a disclosure, each with why it is or is not in.
  function previewRows(previews) {
    document.getElementById("previews").replaceChildren(...previews.map((p) => {
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
      return tr;
    }));
  }

  async function preview(files) {
    fail("preview-error", null);
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
  register({ id: "previews", title: "Rule preview", needs: ["policy.manage", "audit.read"], load: () => preview(null) });

  // ---- Policy history ----
  // A change as diff lines: `+ item` added, `− item` removed, and for each changed field
  // `~ item field` with the old value on a `−` line and the new one on a `+` line.
  function diffLines(c) {
    if (c.rejected_errors !== undefined && c.rejected_errors !== null) {
      return [["rejected", `refused: ${c.rejected_errors} error(s); the loaded policy stayed`]];
    }
    const lines = [];
    for (const n of c.added) lines.push(["add", `+ ${n}`]);
    for (const n of c.removed) lines.push(["del", `− ${n}`]);
    const detailed = new Set(c.fields.map((f) => f.item));
    for (const n of c.changed.filter((n) => !detailed.has(n))) lines.push(["chg", `~ ${n}`]);
    for (const f of c.fields) {
      lines.push(["chg", `~ ${f.item} ${f.field}`]);
      if (f.old !== null && f.old !== undefined) lines.push(["del", `−   ${f.old}`]);
      if (f.new !== null && f.new !== undefined) lines.push(["add", `+   ${f.new}`]);
    }
    return lines.length ? lines : [["", "(no change)"]];
  }

  async function history() {
    try {
      const changes = await api("/v1/admin/policy/history");
      document.getElementById("policy").replaceChildren(...changes.map((c) => {
        const tr = el("tr", null, { class: c.rejected_errors === undefined ? "" : "rejected" });
        const diff = el("td", null, { class: "diff" });
        for (const [kind, text] of diffLines(c)) diff.append(el("div", text, { class: kind }));
        const digest = c.digest_after ? c.digest_after.slice(0, 16) : "—";
        tr.append(timeCell(c.at), el("td", c.actor), el("td", digest, { class: "mono", title: c.digest_after }), diff);
        return tr;
      }));
    } catch (e) { fail("policy-error", e); }
  }
  register({ id: "policy", title: "Policy history", needs: ["policy.manage", "audit.read"], load: history });
})();
