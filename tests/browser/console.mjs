// Drives Debian's headless Chromium through the Portcullis web UI: sign in, list
// devices, open a console, type, resize, exit; replay a ticket; present a stolen one; close a tab. Prints
// one JSON object with what it observed; the Rust test asserts on it.
//
// Usage: node console.mjs '{"url":…,"username":…,"password":…,"device":…,"login":…,"screenshot":…}'
import { chromium } from "playwright-core";
import { accessibility } from "./a11y.mjs";

const cfg = JSON.parse(process.argv[2]);
const result = { steps: [] };
const step = (name) => result.steps.push(name);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => (result.page_errors ??= []).push(String(e)));
  // Expected failed loads (the 401 of "who am I" before signing in, no favicon) are
  // not script errors; anything else logged as an error is.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) (result.console_errors ??= []).push(m.text());
  });
  // The pages' CSP forbids eval, which Playwright's waitForFunction uses; poll with
  // evaluate (run through the DevTools protocol, outside the page's CSP) instead.
  const until = async (p, fn, arg, timeout = 15000) => {
    const end = Date.now() + timeout;
    for (;;) {
      if (await p.evaluate(fn, arg)) return;
      if (Date.now() > end) throw new Error(`timed out waiting for ${fn}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  // Sign in with the local password form.
  const index = await page.goto(`${cfg.url}/ui/`);
  result.index_csp = index.headers()["content-security-policy"] ?? null;
  await page.fill("input[name=username]", cfg.username);
  await page.fill("input[name=password]", cfg.password);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector(`button[data-device="${cfg.device}"]`, { timeout: 15000 });
  step("signed_in");
  result.devices = await page.$$eval("button[data-device]", (bs) => bs.map((b) => b.dataset.device));
  result.admin_link_visible = await page.isVisible("#admin-link");
  const cookie = (await context.cookies()).find((c) => c.name === "__Host-portcullis_session");
  result.cookie = cookie ? { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite } : null;
  result.cookie_visible_to_script = await page.evaluate(() => document.cookie.includes("__Host-portcullis_session"));

  // Open the console from the device list.
  await page.click(`button[data-device="${cfg.device}"]`);
  await page.waitForURL(/\/ui\/console\?/);
  result.console_url = page.url();
  await until(page, () => window.portcullisConsole?.state === "connected", null, 20000);
  step("connected");
  result.a11y = await accessibility(page, "console");
  result.time_left = await page.textContent("#time-left");
  // The toolbar's font size: larger text, fewer columns.
  const cols = await page.evaluate(() => window.portcullisConsole.term.cols);
  await page.click("#font-larger");
  await page.click("#font-larger");
  result.font = await page.evaluate(() => ({ size: window.portcullisConsole.term.options.fontSize,
    cols: window.portcullisConsole.term.cols }));
  result.font.cols_before = cols;
  await page.click("#font-smaller");
  await page.click("#font-smaller");
  const screen = () => page.evaluate(() => {
    const b = window.portcullisConsole.term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
    return lines.join("\n");
  });
  const waitFor = (text, timeout = 15000) => until(page, (t) => {
    const b = window.portcullisConsole.term.buffer.active;
    for (let i = 0; i < b.length; i++) if ((b.getLine(i)?.translateToString(true) ?? "").includes(t)) return true;
    return false;
  }, text, timeout);
  await page.click("#terminal");

  // Type a command; its output comes back (arithmetic proves the shell ran it).
  const marker = `pc${Date.now()}`;
  await page.keyboard.type(`echo ${marker}-$((6*7))\n`);
  await waitFor(`${marker}-42`);
  step("typed");
  // UTF-8 both ways.
  await page.keyboard.type("echo grüße-中文\n");
  await waitFor("grüße-中文\n".trim());
  step("utf8");
  // Paste (one input event; the shell gets it as a bracketed paste), then Enter.
  await page.evaluate(() => window.portcullisConsole.term.paste("echo pasted-$((40+2))"));
  await page.keyboard.press("Enter");
  await waitFor("pasted-42");
  step("pasted");
  // The toolbar's Copy takes the selection to the clipboard; Ctrl+Shift+V pastes it back.
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  await page.evaluate(() => window.portcullisConsole.term.selectAll());
  result.copy_enabled = await page.isEnabled("#copy");
  await page.click("#copy");
  await until(page, () => navigator.clipboard.readText().then((t) => t.includes("pasted-42")));
  await page.evaluate(() => navigator.clipboard.writeText("echo clip-$((2+3))"));
  await page.click("#terminal");
  await page.keyboard.press("Control+Shift+KeyV");
  await page.keyboard.press("Enter");
  await waitFor("clip-5");
  step("copied_and_pasted");
  // A paste that closes the bracketed paste itself (`ESC [201~`), as a page's hostile
  // "copy this command" would: what follows must not run as typed.
  await page.evaluate(() => navigator.clipboard.writeText("echo ok\x1b[201~echo pwned-$((6*7))\r"));
  await page.click("#terminal");
  await page.keyboard.press("Control+Shift+KeyV");
  await page.waitForTimeout(1500);
  result.paste_escape_ran = (await screen()).includes("pwned-42");
  await page.keyboard.press("Control+C");
  step("paste_escape");

  await page.screenshot({ path: cfg.screenshot });
  // Resize the window: the pty follows.
  await page.setViewportSize({ width: 640, height: 400 });
  // The fit follows the window's resize event: wait until the size holds still (on a
  // loaded machine one read 300 ms later can catch it midway).
  const termSize = () => page.evaluate(() => ({ cols: window.portcullisConsole.term.cols, rows: window.portcullisConsole.term.rows }));
  let size = await termSize();
  for (let i = 0; i < 40; i++) {
    await page.waitForTimeout(150);
    const now = await termSize();
    if (now.cols === size.cols && now.rows === size.rows && i > 1) break;
    size = now;
  }
  await page.keyboard.type("stty size\n");
  result.resize_wanted = size;
  await waitFor(`${size.rows} ${size.cols}`).catch(async (e) => { result.screen_on_error = (await screen()).slice(-600); throw e; });
  result.resized = size;
  step("resized");

  // Exit status, then the session ends with the reason shown.
  await page.keyboard.type("exit 3\n");
  await until(page, () => window.portcullisConsole.state === "closed", null);
  result.exit = await page.evaluate(() => window.portcullisConsole.exit);
  result.closed = await page.evaluate(() => window.portcullisConsole.closed);
  result.final_screen = (await screen()).slice(-400);
  result.status_after_close = await page.textContent("#status");
  step("exited");
  // Reconnect asks for a fresh ticket and opens a new session in the same page.
  await until(page, () => !document.getElementById("reconnect").disabled, null);
  await page.click("#reconnect");
  await until(page, () => window.portcullisConsole.state === "connected"
    && window.portcullisConsole.connections === 2, null, 20000);
  await page.click("#terminal");
  await page.keyboard.type("echo again-$((40+2))\n");
  await waitFor("again-42");
  await page.keyboard.type("exit\n");
  await until(page, () => window.portcullisConsole.state === "closed", null);
  step("reconnected");

  // Ticket replay: one ticket, two sockets. The second is refused.
  result.replay = await page.evaluate(async ({ device, login }) => {
    const csrf = (await (await fetch("/v1/auth/csrf")).json()).csrf_token;
    const ask = (mode) => fetch("/v1/console/tickets", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ device, login, mode }),
    });
    const t = await (await ask("ssh")).json();
    const open = () => new Promise((resolve) => {
      const ws = new WebSocket(`wss://${location.host}${t.websocket_path}`);
      const seen = [];
      ws.onopen = () => ws.send(t.ticket);
      ws.onmessage = (ev) => {
        if (typeof ev.data !== "string") return;
        const m = JSON.parse(ev.data);
        seen.push(m.type);
        if (m.type === "connected" || m.type === "closed") resolve({ ws, first: m });
      };
      ws.onclose = () => resolve({ ws, first: { type: "socket_closed" }, seen });
    });
    const first = await open();
    const second = await open();
    first.ws.close();
    const unsupported = await ask("vncwebsocket");
    const noCsrf = await fetch("/v1/console/tickets", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ device, login, mode: "ssh" }),
    });
    return {
      first: first.first,
      second: second.first,
      unsupported_status: unsupported.status,
      unsupported: await unsupported.json(),
      no_csrf_status: noCsrf.status,
      ticket_in_url: location.href.includes(t.ticket),
    };
  }, { device: cfg.device, login: cfg.login });
  step("replayed");

  // A stolen ticket: asked for by this page, presented from another browser that holds
  // no session cookie (and then from this page, its owner). Only the owner's works.
  const stolen = await page.evaluate(async ({ device, login }) => {
    const csrf = (await (await fetch("/v1/auth/csrf")).json()).csrf_token;
    const r = await fetch("/v1/console/tickets", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ device, login, mode: "ssh" }),
    });
    return r.json();
  }, { device: cfg.device, login: cfg.login });
  const present = (p, t) => p.evaluate((t) => new Promise((resolve) => {
    const ws = new WebSocket(`wss://${location.host}${t.websocket_path}`);
    ws.onopen = () => ws.send(t.ticket);
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      const m = JSON.parse(ev.data);
      if (m.type === "connected" || m.type === "closed") {
        ws.close();
        resolve(m);
      }
    };
    ws.onclose = () => resolve({ type: "socket_closed" });
  }), t);
  const thief = await browser.newContext({ ignoreHTTPSErrors: true });
  const thiefPage = await thief.newPage();
  await thiefPage.goto(`${cfg.url}/ui/`);
  result.stolen = { thief: await present(thiefPage, stolen), owner: await present(page, stolen) };
  await thief.close();
  step("stolen_ticket");

  // A link from elsewhere to a console opens nothing by itself (the ticket would be
  // asked for as the signed-in user, on the link's device): it waits for a click.
  const tab = await context.newPage();
  let tickets = 0;
  tab.on("request", (r) => { if (r.url().endsWith("/v1/console/tickets")) tickets += 1; });
  await tab.goto(`${cfg.url}/ui/console?device=${encodeURIComponent(cfg.device)}&login=${encodeURIComponent(cfg.login)}`);
  await until(tab, () => window.portcullisConsole?.state === "waiting", null, 20000);
  await tab.waitForTimeout(500);
  result.linked_console = { state: await tab.evaluate(() => window.portcullisConsole.state), tickets };
  // Closing the tab closes the session.
  await tab.click("#reconnect");
  await until(tab, () => window.portcullisConsole?.state === "connected", null, 20000);
  result.linked_console.tickets_after_click = tickets;
  await tab.close();
  step("tab_closed");
  // A link to the step-up page from anywhere else signs no one out.
  await page.goto(`${cfg.url}/ui/?fresh=1`);
  await page.waitForSelector(`button[data-device="${cfg.device}"]`, { timeout: 15000 });
  result.fresh_link_whoami = await page.evaluate(async () => (await fetch("/v1/auth/whoami")).status);
  step("fresh_link");
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
