/* Live captions page: reads the daemon's websocket protocol (docs/protocol.md, cohere-transcribe/1), nothing else.
 *
 * Finals are shown once each, in seq order: the page remembers the highest final seq it has shown and, after a
 * reconnect, shows only the finals of `hello.finals` past it. A `hello.seq` below the highest seq seen (or a
 * remembered seq that now names another final) means a restarted daemon: the page then forgets what it
 * remembered, as the protocol says, and shows the new daemon's finals. Reconnects back off from 0.5 s to 10 s.
 */
"use strict";

const LANGUAGES = {  // the 14 languages of Cohere Transcribe 03-2026; a model that lacks one answers `error`
  ar: "Arabic", de: "German", el: "Greek", en: "English", es: "Spanish", fr: "French", it: "Italian",
  ja: "Japanese", ko: "Korean", nl: "Dutch", pl: "Polish", pt: "Portuguese", vi: "Vietnamese", zh: "Chinese",
};
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10000;
const PING_EVERY_MS = 15000;  // an application ping; no pong within PONG_WITHIN_MS: the connection is dead
const PONG_WITHIN_MS = 10000;
const AT_BOTTOM_PX = 48;  // this close to the bottom counts as following the captions
const SCALE_MIN = 0.6, SCALE_MAX = 2.5, SCALE_STEP = 1.15;
const REMEMBER_FINALS = 200;  // seq -> final of the latest finals shown: tells a restarted daemon apart
const CUT_SHORT = new Set(["max_new_tokens", "repetition"]);
// A warning stays until dismissed, replaced by the same code, or ended by one of these (speech ends a silence).
const ENDED_BY = {
  source_stalled: ["source_resumed"],
  device_lost: ["device_restored"],
  silent_microphone: ["speech_started", "microphone_sound"],
  falling_behind: ["caught_up"],
};

const $ = (id) => document.getElementById(id);
const el = {
  conn: $("conn"), connText: $("conn-text"), model: $("model"), paused: $("paused-badge"), menu: $("menu"),
  controls: $("controls"), language: $("language"), punctuation: $("punctuation"), pause: $("pause"),
  clear: $("clear"), copy: $("copy"), smaller: $("smaller"), larger: $("larger"), theme: $("theme"),
  warnings: $("warnings"), captions: $("captions"), finals: $("finals"), partial: $("partial"),
  empty: $("empty"), latest: $("latest"), notice: $("notice"),
};

const state = {
  ws: null,
  greeted: false,  // this connection got its hello
  everGreeted: false,
  backoff: BACKOFF_FIRST_MS,
  retryTimer: 0, pingTimer: 0, pongTimer: 0, noticeTimer: 0, pingId: 0,
  lastSeq: -1,  // highest seq of a broadcast message seen
  lastFinalSeq: -1,  // highest seq of a final shown
  lastFinalTime: -Infinity,  // its wall-clock time (ms)
  remembered: new Map(),  // seq -> "timestamp text" of recent finals shown
  settings: null,
  openSegment: null,  // segment whose partial is on screen
  transcript: [],  // finals on screen (Clear empties it): {time, text}
  follow: true,  // auto-scroll, off while the reader has scrolled up
};

// -- storage (may be unavailable: private windows) ------------------------------------------------------------

function load(key, fallback) {
  try { return localStorage.getItem(key) ?? fallback; } catch { return fallback; }
}

function save(key, value) {
  try { localStorage.setItem(key, value); } catch { /* not kept: fine */ }
}

// -- the connection -------------------------------------------------------------------------------------------

function socketUrl() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = 0;
  setConn("connecting", state.everGreeted ? "Reconnecting…" : "Connecting…");
  let ws;
  try {
    ws = new WebSocket(socketUrl());
  } catch (e) {
    setConn("down", `Cannot connect: ${e.message}`);
    return;
  }
  state.ws = ws;
  state.greeted = false;
  ws.onmessage = (ev) => { if (state.ws === ws) onMessage(ev.data); };
  ws.onclose = (ev) => { if (state.ws === ws) dropped(ev.code, ev.reason); };
}

function dropped(code, reason) {
  const ws = state.ws, greeted = state.greeted;
  state.ws = null;
  state.greeted = false;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
  clearInterval(state.pingTimer);
  clearTimeout(state.pongTimer);
  enableControls(false);
  hidePartial();  // its final comes later, live or in the next hello's finals
  let why;
  if (code === 1001) why = "the daemon stopped";
  else if (code === 4008) why = "the connection was too slow";
  else if (!greeted) {
    why = "cannot reach the daemon";
    if (!new URLSearchParams(location.search).has("token")) why += " (if it needs a token, add ?token=… to this page's address)";
  } else why = `connection lost (${code}${reason ? `: ${reason}` : ""})`;
  const delay = state.backoff;
  state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
  setConn("down", `Offline: ${why}. Retrying in ${(delay / 1000).toFixed(delay < 1000 ? 1 : 0)} s`);
  state.retryTimer = setTimeout(connect, delay);
}

function reconnectNow() {
  if (state.retryTimer) connect();
}

function send(message) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    notify("Not connected: try again once the page is live", true);
    return false;
  }
  state.ws.send(JSON.stringify(message));
  return true;
}

function startPing() {
  clearInterval(state.pingTimer);
  state.pingTimer = setInterval(() => {
    const id = ++state.pingId;
    if (!send({ type: "ping", id })) return;
    clearTimeout(state.pongTimer);
    state.pongTimer = setTimeout(() => dropped(4000, "the daemon stopped answering"), PONG_WITHIN_MS);
  }, PING_EVERY_MS);
}

function setConn(kind, text) {
  el.conn.dataset.state = kind;
  el.connText.textContent = text;
  el.conn.title = text;
}

// -- messages -------------------------------------------------------------------------------------------------

function onMessage(data) {
  let m;
  try { m = JSON.parse(data); } catch { return; }
  if (!m || typeof m !== "object") return;
  if (Number.isInteger(m.seq) && !["hello", "pong", "error"].includes(m.type)) {  // broadcasts only
    state.lastSeq = Math.max(state.lastSeq, m.seq);
  }
  switch (m.type) {
    case "hello": onHello(m); break;
    case "speech_started": endWarnings("speech_started"); showPartial(m.segment, "", ""); break;
    case "partial": showPartial(m.segment, str(m.stable), str(m.unstable)); break;
    case "final": showFinal(m); break;
    case "status": onStatus(m); break;
    case "error": onError(m); break;
    case "pong": clearTimeout(state.pongTimer); break;
    default: break;  // speech_stopped: the final tells all; unknown types are ignored
  }
}

function str(v) { return typeof v === "string" ? v : ""; }

function onHello(m) {
  const finals = Array.isArray(m.finals) ? m.finals : [];
  if (restarted(m, finals)) {
    state.lastFinalSeq = -1;
    state.lastFinalTime = -Infinity;
    state.remembered.clear();
    notify("The daemon restarted: showing its captions from here on");
  }
  if (Number.isInteger(m.seq)) state.lastSeq = m.seq;
  state.greeted = state.everGreeted = true;
  state.backoff = BACKOFF_FIRST_MS;
  clearWarnings();  // what was warned about before may have ended while we were away
  hidePartial();
  for (const f of finals) showFinal(f);
  applySettings(m.settings);
  el.model.textContent = [m.model, m.backend].filter((x) => typeof x === "string" && x !== "auto").join(" · ");
  setConn("live", "Live");
  enableControls(true);
  startPing();
}

function restarted(m, finals) {
  if (state.lastSeq < 0) return false;
  if (Number.isInteger(m.seq) && m.seq < state.lastSeq) return true;  // a new counter
  return finals.some((f) => {  // a counter that has already passed ours: a seq we know, another final
    if (!Number.isInteger(f.seq) || f.seq > state.lastFinalSeq) return false;
    const known = state.remembered.get(f.seq);
    return known !== undefined ? known !== finalKey(f) : timeOf(f) > state.lastFinalTime;
  });
}

function finalKey(f) { return `${f.timestamp} ${f.text}`; }

function timeOf(f) {
  const t = Date.parse(f.timestamp);
  return Number.isNaN(t) ? -Infinity : t;
}

function showFinal(f) {
  if (Number.isInteger(f.seq)) {
    if (f.seq <= state.lastFinalSeq) return;  // shown already (hello.finals repeat what we have)
    state.lastFinalSeq = f.seq;
    state.lastFinalTime = timeOf(f);
    state.remembered.set(f.seq, finalKey(f));
    if (state.remembered.size > REMEMBER_FINALS) state.remembered.delete(state.remembered.keys().next().value);
  }
  if (f.segment === state.openSegment) hidePartial();
  const text = str(f.text).trim();
  const li = document.createElement("li");
  li.className = "final";
  if (Number.isInteger(f.seq)) li.dataset.seq = String(f.seq);
  const time = document.createElement("time");
  const when = new Date(timeOf(f));
  const clock = Number.isNaN(when.getTime()) ? streamClock(f.start) : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  time.textContent = clock;
  if (!Number.isNaN(when.getTime())) time.dateTime = when.toISOString();
  time.title = `${streamClock(f.start)}–${streamClock(f.end)} of the stream${f.language ? `, ${f.language}` : ""}`;
  const span = document.createElement("span");
  span.className = "text";
  if (text) {
    span.textContent = text;
    if (CUT_SHORT.has(f.stop_reason)) {
      li.classList.add("cut");
      li.title = "this caption may be cut short";
    }
    state.transcript.push({ time: clock, text });
  } else if (f.stop_reason === "error") {
    li.classList.add("failed");
    span.textContent = "(this part could not be transcribed)";
  } else {
    return;  // nothing was said
  }
  li.append(time, span);
  changing(() => el.finals.append(li));
}

function streamClock(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function showPartial(segment, stable, unstable) {
  state.openSegment = segment;
  changing(() => {
    el.partial.querySelector(".stable").textContent = stable;
    el.partial.querySelector(".unstable").textContent = unstable;
    el.partial.hidden = false;
  });
}

function hidePartial() {
  state.openSegment = null;
  el.partial.hidden = true;
  el.partial.querySelector(".stable").textContent = "";
  el.partial.querySelector(".unstable").textContent = "";
  updateEmpty();
}

function onStatus(m) {
  if (m.settings) applySettings(m.settings);
  const message = str(m.message);
  if (m.level === "warning") {
    addWarning(str(m.code) || "warning", message);
  } else {
    endWarnings(m.code);
    if (message && !["settings_changed", "paused", "resumed"].includes(m.code)) notify(message);
  }
}

function onError(m) {
  notify(`The daemon refused: ${str(m.message) || m.code}`, true);
  applySettings(state.settings);  // put the controls back as the daemon has them
}

// -- settings -------------------------------------------------------------------------------------------------

function fillLanguages() {
  for (const [code, name] of Object.entries(LANGUAGES)) addLanguage(code, `${name} (${code})`);
}

function addLanguage(code, label) {
  const option = document.createElement("option");
  option.value = code;
  option.textContent = label;
  el.language.append(option);
}

function applySettings(s) {
  if (!s || typeof s !== "object") return;
  state.settings = s;
  if (typeof s.language === "string") {
    if (![...el.language.options].some((o) => o.value === s.language)) addLanguage(s.language, s.language);
    el.language.value = s.language;
  }
  el.language.classList.remove("pending");
  el.punctuation.checked = Boolean(s.punctuation);
  el.pause.textContent = s.paused ? "Resume" : "Pause";
  el.pause.setAttribute("aria-pressed", String(Boolean(s.paused)));
  el.paused.hidden = !s.paused;
}

function enableControls(on) {
  for (const c of [el.language, el.punctuation, el.pause]) c.disabled = !on;
}

// -- warnings and notices -----------------------------------------------------------------------------------

function addWarning(code, message) {
  let row = el.warnings.querySelector(`[data-code="${CSS.escape(code)}"]`);
  if (!row) {
    row = document.createElement("p");
    row.className = "warning";
    row.dataset.code = code;
    const text = document.createElement("span");
    text.className = "text";
    const close = document.createElement("button");
    close.type = "button";
    close.textContent = "×";
    close.setAttribute("aria-label", "Dismiss");
    close.onclick = () => row.remove();
    row.append(text, close);
    el.warnings.append(row);
  }
  row.querySelector(".text").textContent = message || code;
}

function endWarnings(code) {
  for (const [warning, enders] of Object.entries(ENDED_BY)) {
    if (enders.includes(code)) el.warnings.querySelector(`[data-code="${warning}"]`)?.remove();
  }
}

function clearWarnings() { el.warnings.replaceChildren(); }

function notify(text, error = false) {
  el.notice.textContent = text;
  el.notice.classList.toggle("error", error);
  el.notice.hidden = false;
  clearTimeout(state.noticeTimer);
  state.noticeTimer = setTimeout(() => { el.notice.hidden = true; }, error ? 7000 : 4000);
}

// -- scrolling: follow the captions unless the reader scrolled up -------------------------------------------

function atBottom() {
  const c = el.captions;
  return c.scrollHeight - c.scrollTop - c.clientHeight <= AT_BOTTOM_PX;
}

function changing(change) {
  change();
  updateEmpty();
  if (state.follow) el.captions.scrollTop = el.captions.scrollHeight;
  else el.latest.hidden = false;
}

function updateEmpty() {
  el.empty.hidden = el.finals.childElementCount > 0 || !el.partial.hidden;
}

// -- the reader's controls ------------------------------------------------------------------------------------

function copyTranscript() {
  const text = state.transcript.map((t) => `[${t.time}] ${t.text}`).join("\n");
  if (!text) {
    notify("Nothing to copy yet");
    return;
  }
  const done = () => notify(`Copied ${state.transcript.length} caption${state.transcript.length === 1 ? "" : "s"}`);
  const fallback = () => {  // no clipboard API off a secure context (http:// to another machine)
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (ok) done(); else notify("Copying was refused by the browser", true);
  };
  if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, fallback);
  else fallback();
}

function clearTranscript() {
  el.finals.replaceChildren();
  state.transcript = [];
  updateEmpty();
  el.latest.hidden = true;
  state.follow = true;
}

function setScale(scale) {
  const s = Math.min(SCALE_MAX, Math.max(SCALE_MIN, scale));
  document.documentElement.style.setProperty("--scale", s.toFixed(3));
  save("captions.scale", s.toFixed(3));
  el.smaller.disabled = s <= SCALE_MIN + 1e-6;
  el.larger.disabled = s >= SCALE_MAX - 1e-6;
  if (state.follow) el.captions.scrollTop = el.captions.scrollHeight;
}

function scale() { return Number(getComputedStyle(document.documentElement).getPropertyValue("--scale")) || 1; }

function setTheme(theme, remember) {
  document.documentElement.dataset.theme = theme;
  el.theme.textContent = theme === "dark" ? "Light" : "Dark";
  el.theme.setAttribute("aria-label", `Switch to ${el.theme.textContent.toLowerCase()} colours`);
  if (remember) save("captions.theme", theme);
}

function wire() {
  fillLanguages();
  const dark = matchMedia("(prefers-color-scheme: dark)");
  setTheme(load("captions.theme", dark.matches ? "dark" : "light"), false);
  dark.addEventListener("change", (e) => { if (!load("captions.theme", null)) setTheme(e.matches ? "dark" : "light", false); });
  setScale(Number(load("captions.scale", "1")) || 1);

  el.language.addEventListener("change", () => {
    if (send({ type: "configure", language: el.language.value })) el.language.classList.add("pending");
    else applySettings(state.settings);
  });
  el.punctuation.addEventListener("change", () => {
    if (!send({ type: "configure", punctuation: el.punctuation.checked })) applySettings(state.settings);
  });
  el.pause.addEventListener("click", () => send({ type: state.settings?.paused ? "resume" : "pause" }));
  el.clear.addEventListener("click", clearTranscript);
  el.copy.addEventListener("click", copyTranscript);
  el.smaller.addEventListener("click", () => setScale(scale() / SCALE_STEP));
  el.larger.addEventListener("click", () => setScale(scale() * SCALE_STEP));
  el.theme.addEventListener("click", () => setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark", true));
  el.menu.addEventListener("click", () => {
    const open = el.controls.classList.toggle("open");
    el.menu.setAttribute("aria-expanded", String(open));
  });
  el.captions.addEventListener("scroll", () => {
    state.follow = atBottom();
    if (state.follow) el.latest.hidden = true;
  });
  el.latest.addEventListener("click", () => {
    state.follow = true;
    el.latest.hidden = true;
    el.captions.scrollTop = el.captions.scrollHeight;
  });
  el.conn.addEventListener("click", reconnectNow);
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) reconnectNow(); });
  connect();
}

wire();
