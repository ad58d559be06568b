// Debian's Chromium, headless, as every browser script starts it (never a downloaded
// browser), and the web UI's password sign-in.
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
