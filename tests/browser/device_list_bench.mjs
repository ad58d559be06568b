// Device-list benchmark in headless Chromium: with thousands of devices, the time to the
// first rendered page after sign-in, then (measured in the page, including layout) a
// search narrowing the list to one device, clearing it, the next page, and a re-sort.
// Prints one JSON object: { devices, api_ms, first_render_ms, filter_ms, clear_ms, next_page_ms, sort_ms }.
//
// Usage: node device_list_bench.mjs '{"url":…,"username":…,"password":…,"needle":…}'
import { launch, signIn } from "./chromium.mjs";

const cfg = JSON.parse(process.argv[2]);
const browser = await launch();
const out = {};
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  await signIn(page, cfg.url, cfg.username, cfg.password);
  await page.waitForSelector("#device-rows tr", { timeout: 60000 });
  // The list's JSON alone, then a cold page load to the first rendered rows.
  out.api_ms = await page.evaluate(async () => {
    const t0 = performance.now();
    const list = await (await fetch("/v1/console/devices", { credentials: "same-origin" })).json();
    window.benchDevices = list.length;
    return performance.now() - t0;
  });
  out.devices = await page.evaluate(() => window.benchDevices);
  const t0 = Date.now();
  await page.goto(`${cfg.url}/ui/`);
  await page.waitForSelector("#device-rows tr", { timeout: 60000 });
  out.first_render_ms = Date.now() - t0;
  // Each step: dispatch, then force layout; the handlers are synchronous.
  const timed = (step) => page.evaluate((step) => {
    const t = performance.now();
    if (step.search !== undefined) {
      const input = document.getElementById("device-search");
      input.value = step.search;
      input.dispatchEvent(new Event("input"));
    } else {
      document.querySelector(step.click).click();
    }
    void document.body.offsetHeight;
    return performance.now() - t;
  }, step);
  out.filter_ms = await timed({ search: cfg.needle });
  out.filter_rows = await page.$$eval("#device-rows tr", (trs) => trs.length);
  out.clear_ms = await timed({ search: "" });
  out.next_page_ms = await timed({ click: "#device-next" });
  out.sort_ms = await timed({ click: '#devices th[data-sort="status"]' });
  out.count = await page.textContent("#device-count");
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));
