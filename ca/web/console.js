// The browser terminal: ask the CA for a single-use ticket (CSRF-protected), open the
// bastion's WebSocket and send the ticket as the first frame (never in the URL), then
// binary frames for terminal bytes and JSON text frames for control.
"use strict";
const { api } = portcullis;

function status(text) { document.getElementById("status").textContent = text; }

async function start() {
  const params = new URLSearchParams(location.search);
  const device = params.get("device") || "";
  const login = params.get("login") || "root";
  document.getElementById("title").textContent = `${login}@${device}`;

  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.portcullisConsole = { term, state: "connecting", exit: null, closed: null };
  const state = window.portcullisConsole;

  let ticket;
  try {
    ticket = await api("/v1/console/tickets", { method: "POST", body: { device, login, mode: "ssh" } });
  } catch (e) {
    state.state = "refused";
    state.closed = { reason: e.code || "refused", message: e.message };
    status(`refused: ${e.message}`);
    term.write(`\r\n[portcullis: ${e.message}]\r\n`);
    return;
  }
  const ws = new WebSocket(`wss://${location.host}${ticket.websocket_path}`);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const resize = () => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  };
  ws.addEventListener("open", () => {
    ws.send(ticket.ticket);
    ticket = null;
    resize();
  });
  ws.addEventListener("message", (ev) => {
    if (typeof ev.data !== "string") return term.write(new Uint8Array(ev.data));
    const msg = JSON.parse(ev.data);
    if (msg.type === "connected") {
      state.state = "connected";
      status("connected");
      term.focus();
    } else if (msg.type === "exit") {
      state.exit = msg.status;
      status(`exited with status ${msg.status}`);
    } else if (msg.type === "idle_warning") {
      // Shown in the status line only: typing (or output) keeps the session.
      state.idleWarning = msg.seconds;
      status(`no activity: closes in ${msg.seconds} s unless you type`);
    } else if (msg.type === "closed") {
      state.state = "closed";
      state.closed = { reason: msg.reason, message: msg.message };
      status(msg.message);
      term.write(`\r\n[portcullis: ${msg.message}]\r\n`);
    }
  });
  ws.addEventListener("close", () => {
    if (state.state !== "closed") status("disconnected");
    state.state = "closed";
  });
  term.onData((data) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(encoder.encode(data));
    if (state.idleWarning) {
      state.idleWarning = null;
      status("connected");
    }
  });
  term.onBinary((data) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const bytes = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
    ws.send(bytes);
  });
  term.onResize(resize);
  window.addEventListener("resize", () => fit.fit());
}

start();
