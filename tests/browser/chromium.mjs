// Debian's Chromium, headless, as every browser script starts it (never a downloaded
// browser), the web UI's password sign-in, and polling a page.
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

// Fills and submits the sign-in form at `url`/ui/.
export async function signIn(page, url, username, password) {
  await page.goto(`${url}/ui/`);
  await page.fill("input[name=username]", username);
  await page.fill("input[name=password]", password);
  await page.click("#login-form button[type=submit]");
}

// Polls `fn(arg)` in the page until it is truthy. The pages' CSP forbids the eval that
// Playwright's waitForFunction uses; evaluate runs through the DevTools protocol instead.
export async function until(page, fn, arg, timeout = 20000) {
  const end = Date.now() + timeout;
  while (!(await page.evaluate(fn, arg))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${fn}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
