// Session recording in headless Chromium: a user opens a console under a recorded rule
// (the page says so), types a command and leaves; an auditor finds the recording on the
// admin page and plays it in asciinema-player, which shows what the terminal showed.
// Prints JSON.
//
// Usage: node recording.mjs '{"url":…,"user":…,"password":…,"device":…,"auditor":…,
//   "auditor_password":…,"screenshot":…}'
import { launch, signIn, until } from "./chromium.mjs";
import { accessibility } from "./a11y.mjs";

const cfg = JSON.parse(process.argv[2]);
const result = { steps: [], a11y: [] };
const browser = await launch();
try {
  // The user's console: told it is recorded; a command and its output.
  const user = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
  user.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
  await signIn(user, cfg.url, cfg.user, cfg.password);
  await user.waitForSelector(`button[data-device="${cfg.device}"]`, { timeout: 15000 });
  await user.click(`button[data-device="${cfg.device}"]`);
  await until(user, () => window.portcullisConsole?.state === "connected");
  result.console_status = await user.textContent("#status");
  await user.click("#terminal");
  await user.keyboard.type("echo browser-$((6*7))\n");
  await until(user, () => {
    const b = window.portcullisConsole.term.buffer.active;
    for (let i = 0; i < b.length; i++) if ((b.getLine(i)?.translateToString(true) ?? "").includes("browser-42")) return true;
    return false;
  });
  await user.keyboard.type("exit\n");
  await until(user, () => window.portcullisConsole.state === "closed");
  result.steps.push("recorded_console");

  // The auditor: the admin page's Recordings tab, then playback.
  const page = await (await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 768 } })).newPage();
  page.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) (result.console_errors ??= []).push(m.text());
  });
  await signIn(page, cfg.url, cfg.auditor, cfg.auditor_password);
  await page.waitForSelector("#admin-link:not([hidden])", { timeout: 15000 });
  await page.goto(`${cfg.url}/ui/admin#recordings`);
  await page.waitForSelector("#view-recordings:not([hidden])", { timeout: 15000 });
  await until(page, () => [...document.querySelectorAll("#recordings tr")].some((tr) => tr.children[3]?.textContent === "Console"));
  result.tabs = await page.$$eval("#tabs [role=tab]", (ts) => ts.map((t) => t.textContent));
  result.rows = await page.$$eval("#recordings tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  result.a11y.push(...(await accessibility(page, "admin: recordings")));
  const row = await page.$("#recordings tr:has(td:text-is('Console'))");
  await Promise.all([page.waitForNavigation(), row.$("a:text-is('Play')").then((a) => a.click())]);
  await page.waitForSelector("#recording:not([hidden])", { timeout: 15000 });
  result.title = await page.textContent("#recording-title");
  result.summary = await page.textContent("#recording-summary");
  result.csp = await page.evaluate(async () => (await fetch(location.href)).headers.get("content-security-policy"));
  await until(page, () => typeof window.portcullisRecording?.play === "function");
  await page.evaluate(() => window.portcullisRecording.play());
  await until(page, () => (document.querySelector("#player")?.textContent ?? "").includes("browser-42"));
  result.played = (await page.textContent("#player")).includes("browser-42");
  result.steps.push("played");
  result.a11y.push(...(await accessibility(page, "recording")));
  if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot });
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
