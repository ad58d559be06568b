// Single sign-on in headless Chromium against the test identity provider: the sign-in
// page's button, the provider's login and consent, and back on the device list signed
// in; a step-up (`/ui/?fresh=1`) makes the provider ask for the password again; a
// callback the provider refused lands on the sign-in page with advice. Prints JSON.
//
// Usage: node sso.mjs '{"url":…,"issuer":…,"username":…,"password":…,"screenshot":…}'
import { launch } from "./chromium.mjs";
import { accessibility } from "./a11y.mjs";

const cfg = JSON.parse(process.argv[2]);
const result = { steps: [], a11y: [] };
const browser = await launch();
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
  const whoami = () => page.evaluate(async () => (await fetch("/v1/auth/whoami")).json());

  // The provider's pages until it sends the browser back: the login form (counted:
  // a step-up must show it, a silent sign-in must not) and the consent.
  const throughIdp = async () => {
    let logins = 0;
    for (let i = 0; i < 6; i++) {
      await page.waitForLoadState("load");
      if (!page.url().startsWith(cfg.issuer)) return logins;
      if (await page.$("input[name=login]")) {
        await page.fill("input[name=login]", cfg.username);
        await page.fill("input[name=password]", cfg.password);
        logins += 1;
      }
      await Promise.all([page.waitForNavigation({ timeout: 15000 }), page.click("button[type=submit]")]);
    }
    throw new Error(`too many steps at the identity provider, at ${page.url()}`);
  };
  const signedIn = async () => {
    await page.waitForSelector("#nav:not([hidden])", { timeout: 15000 });
    return { url: page.url(), shown_as: await page.textContent("#whoami"), me: await whoami() };
  };

  await page.goto(`${cfg.url}/ui/`);
  await page.waitForSelector("#sso:not([hidden]) a", { timeout: 15000 });
  result.a11y.push(...(await accessibility(page, "sign-in with single sign-on")));
  if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot });
  await Promise.all([page.waitForNavigation({ timeout: 15000 }), page.click("#sso a")]);
  result.first_logins = await throughIdp();
  result.first = await signedIn();
  const cookie = (await context.cookies()).find((c) => c.name === "__Host-portcullis_session");
  result.cookie = cookie ? { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite } : null;
  result.steps.push("signed_in");

  // Step-up: the page signs this session out and sends the button with `fresh=1`; the
  // provider's own session still holds, yet it asks for the password again.
  await new Promise((r) => setTimeout(r, 1100));
  // (As the console's "Sign in again" link does: a link from elsewhere signs no one out.)
  await page.evaluate(() => portcullis.intend("fresh"));
  await page.goto(`${cfg.url}/ui/?fresh=1`);
  await page.waitForSelector("#sso:not([hidden]) a", { timeout: 15000 });
  result.fresh_notice = await page.textContent("#login-error");
  result.fresh_signed_out = (await page.evaluate(async () => (await fetch("/v1/auth/whoami")).status)) === 401;
  await Promise.all([page.waitForNavigation({ timeout: 15000 }), page.click("#sso a")]);
  result.fresh_logins = await throughIdp();
  result.fresh = await signedIn();
  result.steps.push("stepped_up");

  // The provider refused (or someone forged a callback): the sign-in page says what to
  // do, and nothing of the query is shown or kept in the address bar.
  const other = await browser.newContext({ ignoreHTTPSErrors: true });
  const refused = await other.newPage();
  refused.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
  await refused.goto(`${cfg.url}/v1/auth/oidc/callback?error=access_denied&error_description=call%20555-0100&state=x`);
  await refused.waitForSelector("#signin:not([hidden])", { timeout: 15000 });
  const end = Date.now() + 5000;
  while ((await refused.textContent("#login-error")) === "" && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  result.refused = { url: refused.url(), advice: await refused.textContent("#login-error") };
  result.a11y.push(...(await accessibility(refused, "single sign-on refused")));
  result.steps.push("refused_shown");
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
