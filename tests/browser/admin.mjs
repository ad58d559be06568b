// The admin page in headless Chromium: sign in as an administrator, see a live session,
// kill it from the page, filter the audit log, see a Proxmox VE cluster and its guests,
// preview rules (loaded, and a file not loaded), read the policy history; before that, the
// device list with a guest under its node, and its search. Prints JSON.
//
// Usage: node admin.mjs '{"url":…,"username":…,"password":…,"new_password":…,"user":…}'
// With `new_password`, `password` is a one-time password: the sign-in form must ask for
// a new one, and the second submit signs in with both.
import { chromium } from "playwright-core";

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
  // The kill asks first: record the question and confirm.
  page.on("dialog", async (d) => { result.kill_question = d.message(); await d.accept(); });
  const until = async (fn, arg, timeout = 15000) => {
    const end = Date.now() + timeout;
    while (!(await page.evaluate(fn, arg))) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${fn}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await page.goto(`${cfg.url}/ui/`);
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
    if (cfg.screenshots) await page.screenshot({ path: `${cfg.screenshots}/device-details.png`, fullPage: true });
    await page.goto(`${cfg.url}/ui/device?name=no-such-device`);
    await until(() => document.getElementById("device-error").textContent !== "");
    result.details_unknown = await page.textContent("#device-error");
    result.steps.push("device_details");
  }
  const admin = await page.goto(`${cfg.url}/ui/admin`);
  result.frame_options = admin.headers()["x-frame-options"] ?? null;
  // The live session of `user` shows up; kill it from the page.
  await until((u) => [...document.querySelectorAll("#sessions tr")].some((tr) => tr.children[1]?.textContent === u), cfg.user);
  result.steps.push("session_listed");
  await page.click("#sessions tr button");
  await until(() => document.querySelectorAll("#sessions tr").length === 0, null, 20000);
  result.steps.push("killed");
  // Audit log with a filter, and the policy history.
  await page.fill("#audit-filter input[name=event]", "session_kill_requested");
  await page.click("#audit-filter button[type=submit]");
  await until(() => [...document.querySelectorAll("#audit tr")].length > 0
    && [...document.querySelectorAll("#audit tr")].every((tr) => tr.dataset.event === "session_kill_requested"));
  result.audit_rows = await page.$$eval("#audit tr", (trs) => trs.map((tr) => ({
    event: tr.children[2]?.textContent, who: tr.children[3]?.textContent, on: tr.children[4]?.textContent,
    when: tr.children[1]?.textContent, at: tr.children[1]?.title, fields: tr.children[5]?.textContent,
  })));
  result.steps.push("audit_filtered");
  // Export what is shown.
  for (const [button, key] of [["#audit-csv", "audit_csv"], ["#audit-jsonl", "audit_jsonl"]]) {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
    const { readFile } = await import("node:fs/promises");
    result[key] = { name: download.suggestedFilename(), text: await readFile(await download.path(), "utf8") };
  }
  // The Proxmox VE clusters view: the cluster is listed; a click shows its guests.
  if (cfg.cluster) {
    await until((id) => [...document.querySelectorAll("#clusters tr button")].some((b) => b.textContent === id), cfg.cluster);
    result.steps.push("cluster_listed");
    await page.click(`#clusters tr button:text-is("${cfg.cluster}")`);
    await until((name) => [...document.querySelectorAll("#guests tr")].some((tr) => tr.children[2]?.textContent === name), cfg.guest);
    result.steps.push("guests_shown");
  }
  // The target preview: the loaded policy's rules, then a file that is not loaded.
  if (cfg.draft_policy) {
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
  await until(() => document.querySelectorAll("#policy tr").length > 0);
  result.policy_rows = await page.evaluate(() => [...document.querySelectorAll("#policy tr")].map((tr) => ({
    actor: tr.children[1]?.textContent, digest: tr.children[2]?.textContent, what: tr.children[3]?.textContent,
  })));
  result.steps.push("policy_history");
  result.errors_shown = await page.evaluate(() => [...document.querySelectorAll(".error")].map((e) => e.textContent).filter(Boolean));
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
