// The admin page in headless Chromium: sign in as an administrator, see a live session,
// kill it from the page, filter the audit log, see a Proxmox VE cluster and its guests,
// preview rules (loaded, and a file not loaded), read the policy history; before that, the
// device list with a guest under its node, and its search. Prints JSON.
//
// Usage: node admin.mjs '{"url":…,"username":…,"password":…,"new_password":…,"user":…}'
// With `new_password`, `password` is a one-time password: the sign-in form must ask for
// a new one, and the second submit signs in with both.
import { chromium } from "playwright-core";
import { accessibility } from "./a11y.mjs";

const cfg = JSON.parse(process.argv[2]);
const result = { steps: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
  // Kill, disable and revoke ask first: record each question and confirm.
  page.on("dialog", async (d) => { (result.questions ??= []).push(d.message()); await d.accept(); });
  const until = async (fn, arg, timeout = 15000) => {
    const end = Date.now() + timeout;
    while (!(await page.evaluate(fn, arg))) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${fn}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  // Serious and critical accessibility violations of every view, by axe-core.
  result.a11y = [];
  const check = async (view) => result.a11y.push(...(await accessibility(page, view)));
  // Readable on a 1366×768 laptop (nothing scrolls sideways) and on a 4K screen at 100 %
  // (the text keeps its size and the page does not stretch across the whole width).
  result.layout = [];
  const layout = async (view) => {
    const before = page.viewportSize();
    for (const [width, height] of [[1366, 768], [3840, 2160]]) {
      await page.setViewportSize({ width, height });
      result.layout.push({ view, width, ...(await page.evaluate(() => ({
        sideways: document.documentElement.scrollWidth - window.innerWidth,
        main_width: Math.round(document.querySelector("main").getBoundingClientRect().width),
        font_px: parseFloat(getComputedStyle(document.body).fontSize),
      }))) });
    }
    await page.setViewportSize(before);
  };
  await page.goto(`${cfg.url}/ui/`);
  await page.waitForSelector("#signin:not([hidden])", { timeout: 15000 });
  await check("sign-in");
  const shot = async (name, fullPage = false) => {
    if (cfg.screenshots) await page.screenshot({ path: `${cfg.screenshots}/${name}.png`, fullPage });
  };
  await shot("sign-in");
  // A wrong password is refused with what to do.
  await page.fill("input[name=username]", cfg.username);
  await page.fill("input[name=password]", "not-the-password");
  await page.click("#login-form button[type=submit]");
  await until(() => document.getElementById("login-error").textContent !== "");
  result.wrong_password = await page.textContent("#login-error");
  await page.fill("input[name=username]", cfg.username);
  await page.fill("input[name=password]", cfg.password);
  await page.click("#login-form button[type=submit]");
  if (cfg.new_password) {
    await page.waitForSelector("#new-password:not([hidden])", { timeout: 15000 });
    result.steps.push("asked_for_new_password");
    result.signed_in_before_change = await page.evaluate(() => !document.getElementById("nav").hidden);
    await page.fill("input[name=new_password]", cfg.new_password);
    await page.fill("input[name=new_password_again]", cfg.new_password);
    await page.click("#login-form button[type=submit]");
  }
  await page.waitForSelector("#admin-link:not([hidden])", { timeout: 15000 });
  result.steps.push("signed_in");
  // The device list: a Proxmox VE guest under its node, and the search.
  if (cfg.guest_device) {
    await page.waitForSelector(`tr[data-device="${cfg.guest_device}"]`, { timeout: 15000 });
    const rows = () => page.$$eval("#device-rows tr", (trs) => trs.map((tr) => ({
      device: tr.dataset.device ?? null, parent: tr.dataset.parent ?? null, guest: tr.classList.contains("guest"),
      hidden: tr.hidden, text: tr.textContent,
    })));
    result.device_rows = await rows();
    // Sorting by a header: the order flips, guests stay under their node.
    await page.click('#devices th[data-sort="name"]');
    result.sorted = { aria: await page.getAttribute('#devices th[data-sort="name"]', "aria-sort"),
      rows: (await rows()).map((r) => r.device) };
    await page.fill("#device-search", cfg.guest);
    result.search_rows = (await rows()).filter((r) => !r.hidden).map((r) => r.device);
    await page.fill("#device-search", "no-such-device");
    result.search_none = {
      shown: (await rows()).filter((r) => !r.hidden).length,
      message: await page.isVisible("#devices-none-match"),
    };
    // Grouped by cluster: a heading row opens each group.
    await page.fill("#device-search", "");
    await page.selectOption("#device-group", "cluster");
    result.grouped = (await rows()).map((r) => r.device ?? r.text);
    await page.selectOption("#device-group", "");
    result.device_count = await page.textContent("#device-count");
    await check("devices");
    await layout("devices");
    await shot("devices");
    // The dark theme (the OS's choice) passes the same check, contrast included.
    await page.emulateMedia({ colorScheme: "dark" });
    await check("devices (dark)");
    await shot("devices-dark");
    await page.emulateMedia({ colorScheme: "light" });
    result.steps.push("devices_listed");
  }
  // A device's details page, reached from its row in the list.
  if (cfg.details_device) {
    await page.fill("#device-search", "");
    await page.click(`tr[data-device="${cfg.details_device}"] td:first-child a`);
    await page.waitForSelector("#device:not([hidden])", { timeout: 15000 });
    const table = (id) => page.$$eval(`#${id} tr`, (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    result.details = {
      url: new URL(page.url()).pathname + new URL(page.url()).search,
      name: await page.textContent("#device-name"),
      identity: await page.$$eval("#identity dt", (dts) => Object.fromEntries(dts.map((dt) => [dt.textContent, dt.nextElementSibling.textContent]))),
      host_keys: await table("host-keys"),
      rules: await table("rules"),
      access: await table("access"),
      access_scope: await page.textContent("#access-scope"),
      sessions: await table("sessions"),
      logins: await page.$$eval("#open-login option", (os) => os.map((o) => o.value)),
    };
    await check("device details");
    await layout("device details");
    await page.emulateMedia({ colorScheme: "dark" });
    await check("device details (dark)");
    await page.emulateMedia({ colorScheme: "light" });
    await shot("device-details", true);
    await page.goto(`${cfg.url}/ui/device?name=no-such-device`);
    await until(() => document.getElementById("device-error").textContent !== "");
    result.details_unknown = await page.textContent("#device-error");
    result.steps.push("device_details");
  }
  const admin = await page.goto(`${cfg.url}/ui/admin`);
  result.frame_options = admin.headers()["x-frame-options"] ?? null;
  await page.waitForSelector("#tabs [role=tab]", { timeout: 15000 });
  result.tabs = await page.$$eval("#tabs [role=tab]", (ts) => ts.map((t) => t.textContent));
  const tab = async (view) => {
    await page.click(`#tabs [data-view="${view}"]`);
    await page.waitForSelector(`#view-${view}:not([hidden])`, { timeout: 5000 });
  };
  // Checked once its content is in, before the next tab opens.
  let lastTab = "sessions";
  const tabChecked = async (view) => {
    await check(`admin: ${lastTab}`);
    lastTab = view;
    await tab(view);
  };
  // The live session of `user` shows up (the first tab); kill it from the page.
  await until((u) => [...document.querySelectorAll("#sessions tr")].some((tr) => tr.children[0]?.textContent === u), cfg.user);
  await shot("admin-sessions");
  result.session_row = await page.$$eval("#sessions tr", (trs) => [...trs[0].children].map((td) => td.textContent));
  result.steps.push("session_listed");
  await layout("admin: sessions");
  await page.click("#sessions tr button");
  await until(() => document.querySelectorAll("#sessions tr").length === 0, null, 20000);
  result.steps.push("killed");
  // Audit log: pages, suggestions, a time range, an event filter.
  await tabChecked("audit");
  await until(() => document.querySelectorAll("#audit tr").length > 0);
  await until(() => document.querySelectorAll("#audit-events option").length > 0);
  result.event_suggestions = await page.$$eval("#audit-events option", (os) => os.map((o) => o.value));
  const seqs = () => page.$$eval("#audit tr", (trs) => trs.map((tr) => Number(tr.children[0].textContent)));
  const first = await seqs();
  result.audit_paging = { first_page: [first[0], first[first.length - 1]], older_enabled: await page.isEnabled("#audit-older") };
  if (result.audit_paging.older_enabled) {
    await page.click("#audit-older");
    await until((top) => Number(document.querySelector("#audit tr")?.children[0].textContent) < top, first[first.length - 1] + 1);
    const second = await seqs();
    result.audit_paging.second_page = [second[0], second[second.length - 1]];
    await page.click("#audit-newer");
    // Back on the newest page (records may have been added meanwhile).
    await until((top) => Number(document.querySelector("#audit tr")?.children[0].textContent) >= top, first[0]);
    result.audit_paging.back = (await seqs())[0];
  }
  // A range that starts tomorrow holds nothing.
  const tomorrow = new Date(Date.now() + 86400000);
  const local = new Date(tomorrow.getTime() - tomorrow.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  await page.fill("#audit-filter input[name=from]", local);
  await page.click("#audit-filter button[type=submit]");
  await until(() => document.querySelectorAll("#audit tr").length === 0);
  result.audit_future = await page.textContent("#audit-count");
  await page.click("#audit-filter button[type=reset]");
  await until(() => document.querySelectorAll("#audit tr").length > 0);
  await page.fill("#audit-filter input[name=event]", "session_kill_requested");
  await page.click("#audit-filter button[type=submit]");
  await until(() => [...document.querySelectorAll("#audit tr")].length > 0
    && [...document.querySelectorAll("#audit tr")].every((tr) => tr.dataset.event === "session_kill_requested"));
  result.audit_rows = await page.$$eval("#audit tr", (trs) => trs.map((tr) => ({
    event: tr.children[2]?.textContent, who: tr.children[3]?.textContent, on: tr.children[4]?.textContent,
    when: tr.children[1]?.textContent, at: tr.children[1]?.title, fields: tr.children[5]?.textContent,
  })));
  await shot("admin-audit");
  result.steps.push("audit_filtered");
  await layout("admin: audit");
  // Export what is shown.
  for (const [button, key] of [["#audit-csv", "audit_csv"], ["#audit-jsonl", "audit_jsonl"]]) {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
    const { readFile } = await import("node:fs/promises");
    result[key] = { name: download.suggestedFilename(), text: await readFile(await download.path(), "utf8") };
  }
  // Users: add one (a one-time password is made in the browser and shown once), then
  // disable them.
  if (cfg.new_user) {
    await tabChecked("users");
    await page.fill("#user-add input[name=username]", cfg.new_user);
    await page.fill("#user-add input[name=groups]", "viewers, lab");
    await page.click("#user-add button[type=submit]");
    await page.waitForSelector("#user-secret:not([hidden])", { timeout: 10000 });
    result.new_user_password = await page.textContent("#user-secret code");
    await until((u) => document.querySelector(`#users tr[data-user="${u}"]`), cfg.new_user);
    result.new_user_groups = await page.inputValue(`#users tr[data-user="${cfg.new_user}"] input`);
    await page.click(`#users tr[data-user="${cfg.new_user}"] button:text-is("Disable")`);
    await until((u) => document.querySelector(`#users tr[data-user="${u}"]`)?.children[2].textContent === "disabled", cfg.new_user);
    result.steps.push("user_added_and_disabled");
  }
  // Nodes, bastions and agents.
  await tabChecked("nodes");
  await until(() => document.querySelectorAll("#nodes tr").length > 0);
  result.nodes = await page.$$eval("#nodes tr", (trs) => trs.map((tr) => [...tr.children].slice(0, 6).map((td) => td.textContent)));
  await tabChecked("services");
  await until(() => document.querySelectorAll("#agents tr, #bastions tr").length > 0);
  result.services = await page.$$eval("#bastions tr, #agents tr", (trs) => trs.map((tr) => tr.children[0].textContent));
  // Enrollment tokens: create one (shown once), see it listed, revoke it.
  await tabChecked("tokens");
  await page.fill("#token-create input[name=uses]", "2");
  await page.fill("#token-create input[name=tags]", "site=lab");
  await page.click("#token-create button[type=submit]");
  await page.waitForSelector("#token-secret:not([hidden])", { timeout: 10000 });
  result.token_secret = await page.textContent("#token-secret code.secret");
  await until(() => document.querySelectorAll("#tokens tr").length > 0);
  result.token_rows = await page.$$eval("#tokens tr", (trs) => trs.map((tr) => [...tr.children].slice(0, 6).map((td) => td.textContent)));
  await page.click("#tokens tr button:text-is('Revoke')");
  await until(() => document.querySelector("#tokens tr")?.children[8].textContent === "used up or revoked");
  result.steps.push("token_created_and_revoked");
  await shot("admin-tokens");
  // The Proxmox VE clusters view: the cluster is listed; a click shows its guests.
  if (cfg.cluster) {
    await tabChecked("clusters");
    await until((id) => [...document.querySelectorAll("#clusters tr button")].some((b) => b.textContent === id), cfg.cluster);
    result.steps.push("cluster_listed");
    await page.click(`#clusters tr button:text-is("${cfg.cluster}")`);
    await until((name) => [...document.querySelectorAll("#guests tr")].some((tr) => tr.children[2]?.textContent === name), cfg.guest);
    result.steps.push("guests_shown");
  }
  // The target preview: the loaded policy's rules, then a file that is not loaded.
  if (cfg.draft_policy) {
    await tabChecked("previews");
    const previews = () => page.$$eval("#previews tr", (trs) => trs.map((tr) => ({
      rule: tr.dataset.rule, matched: tr.children[2]?.textContent, in_scope: tr.children[3]?.textContent,
      agents: tr.children[4]?.textContent, devices: tr.children[5]?.textContent,
    })));
    await until((rule) => document.querySelector(`#previews tr[data-rule="${rule}"]`), cfg.loaded_rule);
    result.preview_loaded = await previews();
    await page.setInputFiles("#preview-form input[type=file]",
      { name: "draft.toml", mimeType: "text/plain", buffer: Buffer.from(cfg.draft_policy) });
    await page.click("#preview-form button[type=submit]");
    await until(() => document.getElementById("preview-source").textContent.includes("draft.toml"));
    result.preview_draft = await previews();
    result.steps.push("previewed");
  }
  await tabChecked("policy");
  await until(() => document.querySelectorAll("#policy tr").length > 0);
  result.policy_rows = await page.evaluate(() => [...document.querySelectorAll("#policy tr")].map((tr) => ({
    actor: tr.children[1]?.textContent, digest: tr.children[2]?.textContent, what: tr.children[3]?.textContent,
  })));
  await check("admin: policy");
  await layout("admin: policy");
  result.steps.push("policy_history");
  result.errors_shown = await page.evaluate(() => [...document.querySelectorAll(".error")].map((e) => e.textContent).filter(Boolean));
  // Someone without an admin permission: no Admin link, and the page by URL shows no view.
  if (cfg.plain_user) {
    const plain = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
    plain.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
    await plain.goto(`${cfg.url}/ui/`);
    await plain.fill("input[name=username]", cfg.plain_user);
    await plain.fill("input[name=password]", cfg.plain_password);
    await plain.click("#login-form button[type=submit]");
    await plain.waitForSelector("#nav:not([hidden])", { timeout: 15000 });
    result.plain = { admin_link: await plain.isVisible("#admin-link") };
    await plain.goto(`${cfg.url}/ui/admin`);
    await plain.waitForSelector("#no-views:not([hidden])", { timeout: 15000 });
    result.plain.tabs = await plain.$$eval("#tabs [role=tab]", (ts) => ts.length);
    result.plain.views = await plain.$$eval("section.view", (vs) => vs.length);
    result.steps.push("plain_user_sees_no_admin");
  }
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
