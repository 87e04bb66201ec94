// koemo web page: upload or record audio, POST it to /v1/predict, draw the result. No build step.
"use strict";

const COLORS = {
  happy: "#f9a825", surprise: "#fb8c00", angry: "#d32f2f", sad: "#1e88e5",
  dislike: "#6d4c41", fear: "#5e35b1", contempt: "#546e7a", neutral: "#9e9e9e",
};
const KOREAN = {
  happy: "기쁨", surprise: "놀람", angry: "분노", sad: "슬픔",
  dislike: "혐오", fear: "공포", contempt: "경멸", neutral: "중립",
};
const $ = (id) => document.getElementById(id);
const color = (label) => COLORS[label] || "#3057d5";
const pct = (p) => (100 * p).toFixed(1) + "%";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(node.style, v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// ---- API key (only when the service runs with --api-keys): kept for this tab only ----
const KEY_STORE = "koemo-api-key";
$("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  loadModelInfo();
});
function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModelInfo() {
  try {
    const r = await fetch("/v1/model", { headers: authHeaders() });
    if (r.status === 401 || r.status === 403) {
      $("model-info").textContent = r.status === 401 ? "this service needs an API key" : "API key not recognised";
      return;
    }
    const m = await r.json();
    const enc = m.encoders ? Object.entries(m.encoders).map(([k, v]) => `${k}: ${v.name || v}`).join(", ") : "";
    $("model-info").textContent =
      `labels: ${m.labels.join(", ")}` + (m.asr ? ` · ASR: ${m.asr}` : "") + (enc ? ` · ${enc}` : "") +
      (m.fusion ? ` · fusion: ${m.fusion}` : "");
  } catch (e) {
    $("model-info").textContent = "model information unavailable";
  }
}

async function send(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  $("chosen").textContent = name;
  $("player").src = URL.createObjectURL(blob);
  $("player").hidden = false;
  status(`Analysing ${name}…`);
  $("result").hidden = true;
  const t0 = performance.now();
  let r, body;
  try {
    r = await fetch("/v1/predict", { method: "POST", body: form, headers: authHeaders() });
    body = await r.json();
  } catch (e) {
    status(`${name}: the service did not answer (${e})`, true);
    return;
  }
  if (!r.ok) {
    status(body.error || `${name}: error ${r.status}`, true);
    return;
  }
  show(body);
  status(`${name}: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

function show(res) {
  $("result-label").textContent = `${res.label} (${KOREAN[res.label] || ""})`;
  $("result-label").dataset.label = res.label;
  $("result-label").style.color = color(res.label);
  $("result-prob").textContent = pct(res.probabilities[res.label]);
  $("transcript").textContent = res.transcript || "(no words recognised)";
  const warnings = $("warnings");
  warnings.replaceChildren(...(res.warnings || []).map((w) => el("li", {}, w)));
  warnings.hidden = !(res.warnings || []).length;

  const bars = $("bars");
  bars.replaceChildren();
  const entries = Object.entries(res.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of entries) {
    bars.append(el("div", { class: "bar" + (label === res.label ? " top" : ""), "data-label": label },
      el("span", { class: "name" }, `${label} ${KOREAN[label] || ""}`),
      el("div", { class: "track" }, el("div", { class: "fill", style: { width: pct(p), background: color(label) } })),
      el("span", { class: "value" }, pct(p))));
  }

  const timeline = $("timeline");
  const list = $("segments");
  timeline.replaceChildren();
  list.replaceChildren();
  const total = Math.max(res.duration, 0.001);
  for (const s of res.segments) {
    const left = (100 * s.start) / total, width = Math.max((100 * (s.end - s.start)) / total, 0.5);
    timeline.append(el("div", {
      class: "seg", "data-label": s.label, title: `${s.start.toFixed(1)}-${s.end.toFixed(1)} s: ${s.label}`,
      style: { left: left + "%", width: width + "%", background: color(s.label) },
    }, s.label));
    list.append(el("li", {}, `${s.start.toFixed(1)}–${s.end.toFixed(1)} s · `,
      el("b", { style: { color: color(s.label) } }, s.label), ` ${pct(s.probabilities[s.label])} · ${s.transcript || "—"}`));
  }

  const c = res.contribution;
  const box = $("contribution");
  box.replaceChildren();
  if (c) {
    const sum = c.audio + c.text || 1;
    box.append(el("div", { class: "split" },
      el("div", { class: "audio", style: { width: pct(c.audio / sum) } }, `audio ${pct(c.audio / sum)}`),
      el("div", { class: "text", style: { width: pct(c.text / sum) } }, `text ${pct(c.text / sum)}`)));
  } else {
    box.append(el("p", { class: "muted" }, "not available for this model"));
  }
  const t = res.timings;
  $("timings").textContent = "seconds: " + ["asr", "speech_encoder", "text_encoder", "fusion", "vad", "decode", "total"]
    .filter((k) => k in t).map((k) => `${k} ${t[k].toFixed(2)}`).join(" · ");
  $("result").hidden = false;
}

// ---- file upload and drag & drop ----
$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (f) send(f, f.name);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) send(f, f.name);
});

// ---- microphone recording (MediaRecorder -> webm/ogg -> upload) ----
let recorder = null, chunks = [], started = 0, ticker = null;
$("record").addEventListener("click", async () => {
  if (recorder && recorder.state === "recording") { recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    status("recording is not supported by this browser (it needs a secure context: https or localhost)", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    status(`microphone: ${e.message || e}`, true);
    return;
  }
  chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  recorder.onstop = () => {
    clearInterval(ticker);
    stream.getTracks().forEach((t) => t.stop());
    $("record").textContent = "● Record";
    $("record").classList.remove("recording");
    const type = recorder.mimeType || "audio/webm";
    const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    send(new Blob(chunks, { type }), `recording.${ext}`);
  };
  recorder.start();
  started = Date.now();
  ticker = setInterval(() => { $("record-time").textContent = `${((Date.now() - started) / 1000).toFixed(0)} s`; }, 250);
  $("record").textContent = "■ Stop";
  $("record").classList.add("recording");
  status("Recording… press Stop when done.");
});

// ---- live microphone: 16 kHz PCM16 over the WebSocket /v1/stream, one result per utterance ----
let live = null;

function streamUrl() {
  const u = new URL("/v1/stream?format=pcm16&sample_rate=16000", location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

// Float32 at `rate` -> Int16 at 16 kHz: the mean of each output sample's input samples.
function downsampler(rate) {
  const step = rate / 16000;
  let next = step, seen = 0, sum = 0, count = 0;
  return (input) => {
    const out = new Int16Array(Math.ceil(input.length / step) + 1);
    let k = 0;
    for (let i = 0; i < input.length; i++) {
      sum += input[i]; count++; seen++;
      if (seen >= next) {
        const v = Math.max(-1, Math.min(1, sum / count));
        out[k++] = v < 0 ? v * 32768 : v * 32767;
        sum = 0; count = 0; next += step;
      }
    }
    return out.subarray(0, k);
  };
}

// A partial (computed during a pause) shows dimmed; the utterance's result with the same index replaces it.
function showUtterance(m) {
  const p = m.probabilities[m.label];
  const item = el("li", { "data-label": m.label, "data-index": String(m.index), class: m.type === "partial" ? "partial" : "" },
    `${m.start.toFixed(1)}–${m.end.toFixed(1)} s · `,
    el("b", { style: { color: color(m.label) } }, `${m.label} ${KOREAN[m.label] || ""}`),
    ` ${pct(p)} · ${m.transcript || "—"} `, el("span", { class: "muted" }, `(+${m.latency_s.toFixed(1)} s)`));
  const old = $("live-list").querySelector(`li[data-index="${m.index}"]`);
  if (old) old.replaceWith(item);
  else $("live-list").append(item);
}

function stopLive() {
  if (!live) return;
  const { ws, stream, ctx } = live;
  stream.getTracks().forEach((t) => t.stop());
  ctx.close();
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  $("live").textContent = "◉ Microphone (live)";
  $("live").classList.remove("recording");
  live = null;
}

async function startLive() {
  if (!navigator.mediaDevices || !window.AudioContext) {
    status("the microphone needs a secure context (https or localhost) and Web Audio", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  } catch (e) {
    status(`microphone: ${e.message || e}`, true);
    return;
  }
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol "koemo.key.KEY".
  const key = $("api-key").value.trim();
  const ws = new WebSocket(streamUrl(), key ? ["koemo", `koemo.key.${key}`] : ["koemo"]);
  ws.binaryType = "arraybuffer";
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const down = downsampler(ctx.sampleRate);
  node.onaudioprocess = (e) => {
    const pcm = down(e.inputBuffer.getChannelData(0));
    if (ws.readyState === WebSocket.OPEN && pcm.length) ws.send(pcm.buffer.slice(pcm.byteOffset, pcm.byteOffset + pcm.byteLength));
  };
  source.connect(node);
  node.connect(ctx.destination);
  live = { ws, stream, ctx };
  $("live-list").replaceChildren();
  $("live-result").hidden = false;
  $("live").textContent = "■ Stop live";
  $("live").classList.add("recording");
  status("Connecting…");
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "ready") status("Listening… pause after each sentence; press Stop when done.");
    else if (m.type === "utterance" || m.type === "partial") showUtterance(m);
    else if (m.type === "error") status(m.error, true);
    else if (m.type === "end") status(`Live: ${m.utterances} utterance(s) in ${m.duration.toFixed(1)} s.`);
  };
  ws.onclose = (e) => {
    if (e.code !== 1000 && e.code !== 1005 && !$("status").classList.contains("error")) {
      status(`live stream closed (${e.code}${e.reason ? ": " + e.reason : ""})`, true);
    }
    stopLive();
  };
}

$("live").addEventListener("click", () => (live ? stopLive() : startLive()));

loadModelInfo();
