// peerd's browser console: status, arrivals and a send box, over one
// WebSocket to the daemon that served this page (messages described in
// crates/peerd/src/console.rs). Plain DOM; bodies are shown as text, never
// as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const MAX_FEED = 1000;
let ws = null;
let nextId = 1;
const pending = new Map();

const size = (b) => {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + u[i];
};
const ago = (now, then) => {
  let s = Math.max(0, Math.round((now - then) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s ago";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m ago";
};
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

function peerCard(p, now) {
  const state = String(p.state).toLowerCase();
  const li = el("li", "peer");
  li.dataset.peer = p.name;
  li.dataset.state = state;
  const head = el("div");
  head.append(el("span", "name", p.name), el("span", "state", state));
  li.append(head);
  const dl = el("dl");
  const row = (k, v, cls) => { dl.append(el("dt", null, k), el("dd", cls || null, v)); };
  row("url", p.url);
  if (state === "connected") {
    row("session", (p.direction || "").toLowerCase() + " " + (p.remote_addr || ""));
    if (p.connected_since_ms) row("up since", ago(now, p.connected_since_ms));
    if (p.rtt_us != null) row("rtt", (p.rtt_us / 1000).toFixed(2) + " ms");
  } else if (p.next_attempt_ms) {
    row("next try", "in " + Math.max(0, Math.ceil((p.next_attempt_ms - now) / 1000)) + "s");
  }
  row("sent", p.msgs_sent + " (" + size(p.bytes_sent) + ")");
  row("received", p.msgs_received + " (" + size(p.bytes_received) + ")");
  row("acked", String(p.msgs_acked));
  const queued = p.queued_msgs + " (" + size(p.queued_bytes) + ")" +
    (p.oldest_queued_ms ? ", oldest " + ago(now, p.oldest_queued_ms) : "");
  row("queued", queued, p.queued_msgs > 0 && state !== "connected" ? "error" : null);
  row("reconnects", String(p.reconnects));
  if (p.msgs_lost) row("lost", String(p.msgs_lost), "error");
  if (p.held) row("held", p.held, "error");
  if (p.last_error && state !== "connected") row("last error", p.last_error, "error");
  li.append(dl);
  return li;
}

function showStatus(s) {
  const now = s.now_ms;
  $("peers").replaceChildren(...s.peers.map((p) => peerCard(p, now)));
  if (s.peers.length === 0) $("peers").append(el("li", null, "no peers configured"));
  const j = s.journal;
  const dl = $("journal");
  dl.replaceChildren();
  const row = (k, v, cls) => { dl.append(el("dt", null, k), el("dd", cls || null, v)); };
  row("outbox", j.outbox_msgs + " (" + size(j.outbox_bytes) + ")");
  row("inbox", j.inbox_msgs + " (" + size(j.inbox_bytes) + ")");
  row("durable", j.durable ? "yes (fsync per batch)" : "no (fsync = never)");
  if (j.storage_error) row("storage", j.storage_error, "error");
  $("about").textContent = "node " + s.node + " · pid " + s.pid + " · up " + ago(now, s.started_ms).replace(" ago", "");
}

function addEntries(entries, fresh) {
  const feed = $("feed");
  const atEnd = feed.scrollTop + feed.clientHeight >= feed.scrollHeight - 8;
  for (const e of entries) {
    const li = el("li", fresh ? "entry fresh" : "entry");
    li.dataset.seq = e.seq;
    li.append(
      el("span", "time", clock(e.received_ms)),
      el("span", "origin", e.origin),
      el("span", "body", e.binary ? "[binary] " + e.body : e.body),
    );
    li.title = "#" + e.seq + " from " + e.origin + " (its #" + e.origin_seq + ")";
    feed.append(li);
  }
  while (feed.children.length > MAX_FEED) feed.firstChild.remove();
  if (atEnd) feed.scrollTop = feed.scrollHeight;
}

function result(text, isError) {
  const r = $("send-result");
  r.textContent = text;
  r.className = isError ? "error" : "";
}

function connect() {
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  let loaded = false;
  ws.onopen = () => setConn("open", "live");
  ws.onclose = (e) => {
    setConn("closed", "disconnected" + (e.code === 1006 ? "" : " (" + e.code + ")") + " — reload, or run peerctl console again");
  };
  ws.onmessage = (m) => {
    let msg;
    try { msg = JSON.parse(m.data); } catch { return; }
    switch (msg.type) {
      case "hello": {
        $("instance").textContent = msg.instance;
        document.title = "peerd " + msg.instance;
        // Where a message goes: every peer, or one (peerctl send --to).
        const to = $("to");
        const every = el("option", null, msg.peers.length ? "every peer" : "nobody (no peers)");
        every.value = "";
        to.replaceChildren(every, ...msg.peers.map((p) => {
          const o = el("option", null, p);
          o.value = p;
          return o;
        }));
        break;
      }
      case "status": showStatus(msg.status); break;
      case "entries": addEntries(msg.entries, loaded); break;
      case "gap": {
        const li = el("li", "gap", "messages " + msg.from + "–" + (msg.resume_at - 1) + " are no longer kept (inbox_retention)");
        $("feed").append(li);
        break;
      }
      case "sent": {
        pending.delete(msg.id);
        result("stored as #" + msg.first + "; it goes to the peers now", false);
        break;
      }
      case "error": {
        if (msg.id != null) pending.delete(msg.id);
        result(msg.message, true);
        break;
      }
    }
    if (msg.type === "entries" || msg.type === "status") loaded = true;
  };
}

$("send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("message");
  const body = input.value;
  if (!ws || ws.readyState !== WebSocket.OPEN) { result("not connected", true); return; }
  if (body === "") { result("empty messages are never stored", true); return; }
  const id = nextId++;
  const to = $("to").value || null;
  pending.set(id, body);
  ws.send(JSON.stringify({ type: "send", id, body, to }));
  input.value = "";
  input.focus();
});

connect();
