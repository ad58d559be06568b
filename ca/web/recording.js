// One session recording, played with asciinema-player (vendored). The recording comes
// from the API with the session cookie; fetching it is what the CA audits.
"use strict";
(async () => {
  const { api, when, bytes } = portcullis;
  const error = document.getElementById("recording-error");
  const id = new URLSearchParams(location.search).get("session") || "";
  if (!/^[0-9a-f]{32}$/.test(id)) {
    error.textContent = "No recording named: open one from the admin page's Recordings tab.";
    return;
  }
  const src = `/v1/admin/recordings/${id}`;
  try {
    const info = (await api("/v1/admin/recordings")).find((r) => r.session_id === id);
    document.getElementById("recording-title").textContent =
      info ? `${info.user}${info.login ? ` as ${info.login}` : ""} on ${info.device}` : `Session ${id}`;
    if (info) {
      const notes = [`${info.mode} session, started ${when(info.started_at)}`, bytes(info.bytes)];
      if (info.input_recorded) notes.push("keystrokes recorded");
      if (info.truncated) notes.push("cut at the rule's size limit: the end of the session is not in it");
      if (info.ended_at === undefined || info.ended_at === null) notes.push("the session is still live");
      document.getElementById("recording-summary").textContent = notes.join(" · ");
    }
    document.getElementById("recording-download").href = src;
    document.getElementById("recording").hidden = false;
    window.portcullisRecording = AsciinemaPlayer.create(src, document.getElementById("player"), {
      fit: "width", idleTimeLimit: 2, controls: true, preload: true,
    });
  } catch (e) {
    error.textContent = e.status === 403
      ? "Recordings are shown to holders of the recordings.read permission only."
      : e.message;
  }
})();
