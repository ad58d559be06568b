// Browser-terminal benchmark in headless Chromium: output throughput into xterm.js and
// keystroke echo latency, through the web UI, the bastion and its agent to a node.
// Prints one JSON object: { throughput_mib_s, bytes, seconds, echo_ms: {p50, p99, max, n} }.
//
// Usage: node console_bench.mjs '{"url":…,"username":…,"password":…,"device":…,"login":…,"bytes":…,"keys":…}'
import { launch, signIn } from "./chromium.mjs";

const cfg = JSON.parse(process.argv[2]);
const browser = await launch();
const out = {};
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  await signIn(page, cfg.url, cfg.username, cfg.password);
  await page.waitForSelector(`button[data-device="${cfg.device}"]`, { timeout: 15000 });
  await page.goto(`${cfg.url}/ui/console?device=${encodeURIComponent(cfg.device)}&login=${encodeURIComponent(cfg.login)}`);
  const until = async (fn, arg, timeout = 30000) => {
    const end = Date.now() + timeout;
    while (!(await page.evaluate(fn, arg))) {
      if (Date.now() > end) throw new Error("timed out");
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  // Reached by URL, not from the device list: the page waits for a click.
  await until(() => window.portcullisConsole?.state === "waiting");
  await page.click("#reconnect");
  await until(() => window.portcullisConsole?.state === "connected");
  await page.waitForTimeout(500);

  // Throughput: the node prints `bytes` of printable text; timed in the page from the
  // command's Enter to the moment xterm.js has parsed the end marker.
  out.bytes = cfg.bytes;
  const seconds = await page.evaluate(async (bytes) => {
    const term = window.portcullisConsole.term;
    const marker = `END${Date.now()}`;
    return await new Promise((resolve) => {
      let t0 = 0;
      const sub = term.onWriteParsed(() => {
        const b = term.buffer.active;
        for (let i = Math.max(0, b.baseY + b.cursorY - 3); i <= b.baseY + b.cursorY; i++) {
          if ((b.getLine(i)?.translateToString(true) ?? "").startsWith(marker)) {
            sub.dispose();
            resolve((performance.now() - t0) / 1000);
            return;
          }
        }
      });
      t0 = performance.now();
      term.input(`head -c ${bytes} /dev/zero | tr '\\0' 'x' | fold -w 100; echo; echo ${marker.slice(0, 3)}\${X}${marker.slice(3)}\r`);
    });
  }, cfg.bytes);
  out.seconds = seconds;
  out.throughput_mib_s = cfg.bytes / seconds / (1024 * 1024);

  // Echo latency: one key at a time into the shell prompt; from the input event to the
  // first parsed write after it (the echo), measured in the page.
  await page.evaluate(() => window.portcullisConsole.term.input("clear\r"));
  await page.waitForTimeout(500);
  const samples = await page.evaluate(async (n) => {
    const term = window.portcullisConsole.term;
    const lat = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await new Promise((resolve) => {
        const sub = term.onWriteParsed(() => { sub.dispose(); resolve(); });
        term.input("abcdefghij"[i % 10]);
      });
      lat.push(performance.now() - t0);
      if (i % 50 === 49) {
        term.input("\x15"); // ^U: clear the line
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    return lat;
  }, cfg.keys);
  samples.sort((a, b) => a - b);
  const q = (p) => samples[Math.min(samples.length - 1, Math.floor(p * samples.length))];
  out.echo_ms = { p50: q(0.5), p99: q(0.99), max: samples[samples.length - 1], n: samples.length };
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));
