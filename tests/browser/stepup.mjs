// Step-up in headless Chromium: a console whose rule asks for a recent sign-in, opened
// with a sign-in that is too old, is refused with a "Sign in again" link; the link ends
// the session and asks for the password; signed in afresh, the console opens. Prints
// JSON.
//
// Usage: node stepup.mjs '{"url":…,"username":…,"password":…,"device":…,"wait_ms":…}'
import { launch, signIn, until } from "./chromium.mjs";
import { accessibility } from "./a11y.mjs";

const cfg = JSON.parse(process.argv[2]);
const result = { steps: [], a11y: [] };
const browser = await launch();
try {
  const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
  page.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
  await signIn(page, cfg.url, cfg.username, cfg.password);
  await page.waitForSelector(`button[data-device="${cfg.device}"]`, { timeout: 15000 });
  // Let the sign-in grow older than the rule allows.
  await new Promise((r) => setTimeout(r, cfg.wait_ms));
  await page.click(`button[data-device="${cfg.device}"]`);
  await until(page, () => window.portcullisConsole?.state === "refused");
  result.refused = await page.textContent("#status");
  result.a11y.push(...(await accessibility(page, "console refused for step-up")));
  await Promise.all([page.waitForNavigation(), page.click("#status a:text-is('Sign in again')")]);
  await page.waitForSelector("#signin:not([hidden])", { timeout: 15000 });
  result.url = new URL(page.url()).pathname + new URL(page.url()).search;
  result.notice = await page.textContent("#login-error");
  result.signed_out = (await page.evaluate(async () => (await fetch("/v1/auth/whoami")).status)) === 401;
  result.steps.push("asked_again");
  await page.fill("input[name=username]", cfg.username);
  await page.fill("input[name=password]", cfg.password);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector(`button[data-device="${cfg.device}"]`, { timeout: 15000 });
  await page.click(`button[data-device="${cfg.device}"]`);
  await until(page, () => window.portcullisConsole?.state === "connected");
  result.steps.push("connected_after_step_up");
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
