// The browser terminal: ask the CA for a single-use ticket (CSRF-protected), open the
// bastion's WebSocket and send the ticket as the first frame (never in the URL), then
// binary frames for terminal bytes and JSON text frames for control. The toolbar:
// reconnect (a fresh ticket), copy and paste, font size, full screen, and the time left.
// Ctrl+Shift+C and Ctrl+Shift+V copy and paste as in Proxmox VE's console (plain Ctrl+C
// stays the terminal's interrupt).
"use strict";
const { api } = portcullis;

function status(text) { document.getElementById("status").textContent = text; }

// `3:05` / `1:02:03`.
function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const [h, m, r] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

// A countdown shown in `element` until `seconds` run out or `stop()` is called.
function countdown(element, seconds, text) {
  const end = Date.now() + seconds * 1000;
  const tick = () => { element.textContent = text(clock((end - Date.now()) / 1000)); };
  tick();
  const timer = setInterval(tick, 1000);
  return () => { clearInterval(timer); };
}

function start() {
  const params = new URLSearchParams(location.search);
  const device = params.get("device") || "";
  const login = params.get("login") || "";
  document.getElementById("title").textContent = `${login}@${device}`;

  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000, fontSize: 14 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  const state = { term, state: "connecting", exit: null, closed: null, connections: 0 };
  window.portcullisConsole = state;
  const encoder = new TextEncoder();
  let ws = null;
  let stopTimeLeft = () => {};
  let stopIdle = () => {};
  const timeLeft = document.getElementById("time-left");
  const reconnect = document.getElementById("reconnect");

  const resize = () => {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    }
  };
  const ended = () => {
    stopTimeLeft();
    stopIdle();
    timeLeft.textContent = "";
    reconnect.disabled = false;
  };

  async function connect() {
    reconnect.textContent = "Reconnect";
    reconnect.disabled = true;
    state.state = "connecting";
    state.closed = null;
    state.exit = null;
    status("connecting…");
    let ticket;
    try {
      ticket = await api("/v1/console/tickets", { method: "POST", body: { device, login, mode: "ssh" } });
    } catch (e) {
      state.state = "refused";
      state.closed = { reason: e.code || "refused", message: e.message };
      status(`refused: ${e.message}`);
      term.write(`\r\n[portcullis: ${e.message}]\r\n`);
      // A step-up rule: offer the sign-in it asks for.
      if (String(e.message).startsWith("fresh_auth_required")) {
        const again = document.createElement("a");
        again.href = "/ui/?fresh=1";
        again.textContent = "Sign in again";
        again.addEventListener("click", () => portcullis.intend("fresh"));
        document.getElementById("status").append(" ", again);
      }
      ended();
      return;
    }
    const socket = new WebSocket(`wss://${location.host}${ticket.websocket_path}`);
    ws = socket;
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => {
      socket.send(ticket.ticket);
      ticket = null;
      resize();
    });
    socket.addEventListener("message", (ev) => {
      if (typeof ev.data !== "string") return term.write(new Uint8Array(ev.data));
      const msg = JSON.parse(ev.data);
      if (msg.type === "connected") {
        state.state = "connected";
        state.connections += 1;
        state.recorded = msg.recorded === true;
        status(state.recorded ? "connected · this session is recorded" : "connected");
        if (typeof msg.closes_in === "number") {
          stopTimeLeft = countdown(timeLeft, msg.closes_in, (t) => `session ends in ${t}`);
        }
        term.focus();
      } else if (msg.type === "exit") {
        state.exit = msg.status;
        status(`exited with status ${msg.status}`);
      } else if (msg.type === "idle_warning") {
        // Typing (or output) keeps the session; the countdown says how long is left.
        state.idleWarning = msg.seconds;
        stopIdle();
        stopIdle = countdown(document.getElementById("status"), msg.seconds,
          (t) => `no activity: closes in ${t} unless you type`);
      } else if (msg.type === "closed") {
        state.state = "closed";
        state.closed = { reason: msg.reason, message: msg.message };
        ended();
        // The reason stays on screen until the next connection.
        status(msg.message);
        term.write(`\r\n[portcullis: ${msg.message}]\r\n`);
      }
    });
    socket.addEventListener("close", () => {
      if (socket !== ws) return;
      if (state.state !== "closed") status("disconnected");
      state.state = "closed";
      ended();
    });
  }

  term.onData((data) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(encoder.encode(data));
    if (state.idleWarning) {
      state.idleWarning = null;
      stopIdle();
      status("connected");
    }
  });
  term.onBinary((data) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const bytes = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
    ws.send(bytes);
  });
  term.onResize(resize);
  window.addEventListener("resize", () => fit.fit());

  // Copy: the selection to the clipboard. Paste: the clipboard into the terminal as one
  // bracketed paste (the shell does not run a pasted line before Enter). xterm.js 5.5
  // wraps the text as it is, so an `ESC [201~` inside it would end the bracket early and
  // what follows would run as typed — a "command" copied from a hostile page. No escape
  // of a pasted text reaches the terminal: ESC and CSI show as ␛.
  const pasteText = (text) => { if (text) term.paste(text.replace(/[\x1b\x9b]/g, "\u241b")); };
  // The browser's own paste (Ctrl+Shift+V, the context menu) too, caught on its way
  // down to xterm.js's textarea.
  document.getElementById("terminal").addEventListener("paste", (ev) => {
    ev.preventDefault();
    ev.stopPropagation();
    pasteText(ev.clipboardData ? ev.clipboardData.getData("text/plain") : "");
    term.focus();
  }, true);
  const copyButton = document.getElementById("copy");
  term.onSelectionChange(() => { copyButton.disabled = !term.hasSelection(); });
  const copy = () => {
    if (term.hasSelection()) navigator.clipboard.writeText(term.getSelection()).catch(() => status("cannot copy: the browser refused the clipboard"));
    term.focus();
  };
  const paste = () => {
    navigator.clipboard.readText().then(pasteText)
      .catch(() => status("cannot paste: the browser refused the clipboard (use the browser's own paste)"));
    term.focus();
  };
  copyButton.addEventListener("click", copy);
  document.getElementById("paste").addEventListener("click", paste);
  // Ctrl+Shift+C copies (and opens no developer tools); Ctrl+Shift+V is left to the
  // browser, whose own paste event xterm.js takes (pasting here as well would paste
  // twice) — the terminal just must not see it as a key.
  term.attachCustomKeyEventHandler((ev) => {
    if (!ev.ctrlKey || !ev.shiftKey || !["KeyC", "KeyV"].includes(ev.code)) return true;
    if (ev.type === "keydown" && ev.code === "KeyC") {
      ev.preventDefault();
      copy();
    }
    return false;
  });

  reconnect.addEventListener("click", () => {
    term.reset();
    connect();
  });
  const fontBy = (step) => {
    term.options.fontSize = Math.min(32, Math.max(8, term.options.fontSize + step));
    fit.fit();
    term.focus();
  };
  document.getElementById("font-smaller").addEventListener("click", () => fontBy(-1));
  document.getElementById("font-larger").addEventListener("click", () => fontBy(1));
  document.getElementById("full-screen").addEventListener("click", () => {
    const page = document.documentElement;
    (document.fullscreenElement ? document.exitFullscreen() : page.requestFullscreen()).catch(() => {});
    term.focus();
  });
  // Opened from our device list: connect. From a link anywhere else: only on a click,
  // so a link cannot open a session as the user on a device of its choosing.
  if (portcullis.intended(`console?${new URLSearchParams({ device, login })}`)) connect();
  else {
    state.state = "waiting";
    status(`Connect to open a console as ${login || "(no login)"} on ${device || "(no device)"}.`);
    reconnect.textContent = "Connect";
    reconnect.disabled = false;
  }
}

start();
