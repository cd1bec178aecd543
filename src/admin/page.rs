//! The admin web page: one self-contained HTML document (inline CSS and
//! JavaScript, no external assets, works offline) over the JSON API.

/// The page served at `GET /`.
pub(super) const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>durable admin</title>
<style>
:root { --bg:#f7f7f9; --fg:#1d1f24; --muted:#6b7280; --line:#e3e5ea; --card:#fff;
  --ok:#15803d; --err:#b91c1c; --warn:#b45309; --run:#1d4ed8; --sleep:#0e7490; --wait:#7c3aed; --attn:#c026d3; --grey:#6b7280; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--fg); }
header { display:flex; align-items:center; gap:16px; padding:10px 20px; background:#111827; color:#fff; }
header h1 { font-size:16px; margin:0; font-weight:600; }
header a { color:#fff; text-decoration:none; }
header .spacer { flex:1; }
header input { background:#1f2937; color:#fff; border:1px solid #374151; border-radius:4px; padding:4px 8px; width:220px; }
main { padding:16px 20px; max-width:1400px; margin:0 auto; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:12px 16px; margin-bottom:14px; }
.chips { display:flex; flex-wrap:wrap; gap:8px; }
.chip { border:1px solid var(--line); background:#fff; border-radius:14px; padding:3px 10px; cursor:pointer; font-size:13px; }
.chip.on { border-color:#111827; background:#111827; color:#fff; }
.chip b { margin-left:4px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em; }
tbody tr.link { cursor:pointer; }
tbody tr.link:hover { background:#f1f5f9; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; color:#fff; background:var(--grey); }
.s-completed { background:var(--ok); } .s-failed { background:var(--err); } .s-blocked { background:var(--warn); }
.s-running { background:var(--run); } .s-sleeping { background:var(--sleep); } .s-waiting { background:var(--wait); }
.s-needs-attention { background:var(--attn); } .s-incompatible { background:var(--err); } .s-cancelled { background:var(--grey); }
.s-paused { background:#475569; }
.muted { color:var(--muted); }
.row-flex { display:flex; gap:10px; align-items:center; flex-wrap:wrap; }
button.act { border:1px solid #111827; background:#111827; color:#fff; border-radius:4px; padding:5px 12px; cursor:pointer; }
button.act.danger { background:var(--err); border-color:var(--err); }
button.act:disabled { background:#d1d5db; border-color:#d1d5db; color:#6b7280; cursor:not-allowed; }
select, input.f, textarea { border:1px solid var(--line); border-radius:4px; padding:4px 8px; font:inherit; }
pre { margin:0; white-space:pre-wrap; word-break:break-word; max-height:220px; overflow:auto; background:#f8fafc; border:1px solid var(--line); border-radius:4px; padding:4px 6px; }
#message { min-height:1.4em; }
#message.err { color:var(--err); } #message.ok { color:var(--ok); }
.timeline { position:relative; }
.axis { position:relative; height:20px; margin-left:180px; border-bottom:1px solid var(--line); }
.axis span { position:absolute; font-size:11px; color:var(--muted); transform:translateX(-50%); top:2px; }
.tl-row { display:flex; align-items:center; height:26px; }
.tl-label { width:180px; padding-right:8px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; font-size:12.5px; }
.tl-track { position:relative; flex:1; height:18px; background:repeating-linear-gradient(90deg, transparent, transparent 9.9%, #f1f5f9 10%); }
.bar { position:absolute; top:2px; height:14px; min-width:3px; border-radius:3px; font-size:10.5px; color:#fff; padding:0 4px; overflow:hidden; white-space:nowrap; line-height:14px; }
.o-ok, .o-received { background:var(--ok); }
.o-error, .o-panicked, .o-too-large { background:var(--err); }
.o-retrying { background:var(--warn); }
.o-running { background:var(--run); }
.o-sleeping, .k-sleep { background:repeating-linear-gradient(45deg, var(--sleep), var(--sleep) 4px, #22a3b8 4px, #22a3b8 8px); }
.o-waiting, .o-timed-out, .k-wait { background:repeating-linear-gradient(90deg, var(--wait), var(--wait) 3px, #a78bfa 3px, #a78bfa 6px); }
.legend span { margin-right:12px; font-size:12px; }
.legend i { display:inline-block; width:14px; height:10px; border-radius:2px; margin-right:4px; vertical-align:middle; }
h2 { font-size:15px; margin:0 0 8px; }
h3 { font-size:13px; margin:12px 0 6px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em; }
.grid { display:grid; grid-template-columns: 160px 1fr; gap:4px 12px; }
</style>
</head>
<body>
<header>
  <h1><a href="#/">durable</a></h1>
  <span id="nav" class="muted"></span>
  <span class="spacer"></span>
  <label class="muted" for="token">token</label>
  <input id="token" type="password" placeholder="bearer token for actions" autocomplete="off">
</header>
<main id="app"><p class="muted">Loading…</p></main>
<script>
"use strict";
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const app = document.getElementById("app");
const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("durable-token") || "";
tokenInput.addEventListener("input", () => { sessionStorage.setItem("durable-token", tokenInput.value); });
const state = { statuses: new Set(), workflow: "", timer: null };
const KINDS = ["running","sleeping","waiting","blocked","needs-attention","incompatible","paused","completed","failed","cancelled"];
let info = null;

function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c])); }
function fmtTime(ms) { if (ms == null) return ""; const d = new Date(ms); return d.toISOString().replace("T"," ").replace(/\.\d+Z$/,"Z"); }
function fmtDur(ms) { if (ms == null || ms < 0) return ""; if (ms < 1000) return ms + "ms"; const s = ms/1000; if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + "s"; const m = s/60; if (m < 60) return m.toFixed(1) + "m"; const h = m/60; if (h < 48) return h.toFixed(1) + "h"; return (h/24).toFixed(1) + "d"; }
function ago(ms) { return fmtDur(Date.now() - ms) + " ago"; }
function badge(kind) { return `<span class="badge s-${esc(kind)}" data-kind="${esc(kind)}">${esc(kind)}</span>`; }
function json(v) { return `<pre class="mono">${esc(JSON.stringify(v, null, 2))}</pre>`; }
function detail(st) {
  if (!st) return "";
  if (st.reason) return st.reason;
  if (st.kind === "waiting") return "event " + st.event + (st.until_ms ? " until " + fmtTime(st.until_ms) : "");
  if (st.kind === "sleeping") return "until " + fmtTime(st.until_ms);
  if (st.kind === "paused") return "since " + fmtTime(st.since_ms);
  if (st.kind === "completed") return st.is_err ? "returned Err" : "";
  if (st.kind === "running" && st.steps && st.steps.length) return "in " + st.steps.map(s => s.name + " (attempt " + s.attempt + ")").join(", ");
  return "";
}
async function api(path, opts) {
  const r = await fetch(base + path, opts);
  let body = null; try { body = await r.json(); } catch (e) { body = {error:{kind:"http", message: r.statusText}}; }
  if (!r.ok) { const e = new Error((body.error && body.error.message) || r.statusText); e.status = r.status; throw e; }
  return body;
}
async function act(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (tokenInput.value) headers["Authorization"] = "Bearer " + tokenInput.value;
  return api(path, {method: "POST", headers, body: body === undefined ? "" : body});
}

async function showList() {
  document.getElementById("nav").textContent = "instances";
  const stats = await api("stats");
  const q = new URLSearchParams();
  for (const s of state.statuses) q.append("status", s);
  if (state.workflow) q.set("workflow", state.workflow);
  q.set("limit", "200");
  const page = await api("instances?" + q.toString());
  const chips = KINDS.map(k => `<button class="chip ${state.statuses.has(k) ? "on" : ""}" data-status="${k}">${k}<b data-count="${k}">${stats.by_status[k] || 0}</b></button>`).join("");
  const wfs = Object.keys(stats.by_workflow || {});
  const rows = page.instances.map(i => `<tr class="link" data-id="${esc(i.id)}"><td class="mono">${esc(i.id)}</td><td>${esc(i.workflow)}</td><td>${badge(i.status.kind)}</td><td class="muted">${esc(detail(i.status))}</td><td title="${fmtTime(i.created_at_ms)}">${ago(i.created_at_ms)}</td><td title="${fmtTime(i.updated_at_ms)}">${ago(i.updated_at_ms)}</td></tr>`).join("");
  app.innerHTML = `
  <div class="card"><div class="row-flex"><h2 style="margin:0">Instances</h2><span class="muted" id="total">${stats.total} in all</span></div>
    <div class="chips" id="counts" style="margin-top:10px">${chips}</div>
    <div class="row-flex" style="margin-top:10px"><label class="muted" for="wf">workflow</label>
      <select id="wf"><option value="">all</option>${wfs.map(w => `<option ${w === state.workflow ? "selected" : ""}>${esc(w)}</option>`).join("")}</select></div></div>
  <div class="card"><table id="instances"><thead><tr><th>id</th><th>workflow</th><th>status</th><th>detail</th><th>created</th><th>updated</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="6" class="muted">no instances</td></tr>`}</tbody></table>
    ${page.next ? `<p class="muted">more instances follow; narrow the filter</p>` : ""}</div>`;
  for (const c of app.querySelectorAll(".chip")) c.onclick = () => { const s = c.dataset.status; state.statuses.has(s) ? state.statuses.delete(s) : state.statuses.add(s); render(); };
  document.getElementById("wf").onchange = e => { state.workflow = e.target.value; render(); };
  for (const r of app.querySelectorAll("tr.link")) r.onclick = () => { location.hash = "#/i/" + encodeURIComponent(r.dataset.id); };
}

function timeline(doc) {
  const now = Date.now();
  const finished = ["completed","failed","cancelled"].includes(doc.status.kind);
  const t0 = doc.created_at_ms;
  let t1 = finished ? doc.updated_at_ms : now;
  for (const s of doc.steps) { t1 = Math.max(t1, s.finished_at_ms || 0, s.until_ms && !finished ? Math.min(s.until_ms, now) : 0); }
  if (t1 <= t0) t1 = t0 + 1;
  const span = t1 - t0;
  const pct = t => Math.max(0, Math.min(100, (t - t0) / span * 100));
  const ticks = [0, .25, .5, .75, 1].map(f => `<span style="left:${f*100}%">+${fmtDur(Math.round(span*f)) || "0ms"}</span>`).join("");
  const rows = doc.steps.map(s => {
    let end = s.finished_at_ms;
    if (end == null) end = finished ? doc.updated_at_ms : (s.until_ms ? Math.min(s.until_ms, now) : now);
    const left = pct(s.started_at_ms), width = Math.max(0.4, pct(end) - left);
    const tries = s.attempts > 1 ? ` ×${s.attempts}` : "";
    const label = s.name + (s.key ? "[" + s.key + "]" : (s.occurrence ? "#" + s.occurrence : ""));
    const title = `${label}: ${s.kind}, ${s.outcome}, ${s.attempts} attempt(s), ${fmtDur(end - s.started_at_ms)}`;
    return `<div class="tl-row" data-step="${esc(s.name)}"><div class="tl-label mono" title="${esc(label)}">${esc(label)}</div><div class="tl-track"><div class="bar o-${esc(s.outcome)} k-${esc(s.kind)}" data-outcome="${esc(s.outcome)}" data-kind="${esc(s.kind)}" data-attempts="${s.attempts}" title="${esc(title)}" style="left:${left}%;width:${width}%">${esc(s.outcome)}${tries}</div></div></div>`;
  }).join("");
  return `<div class="timeline" id="timeline"><div class="axis">${ticks}</div>${rows || `<p class="muted">no steps yet</p>`}</div>
   <p class="legend muted"><span><i class="o-ok"></i>ok</span><span><i class="o-error"></i>error/panic</span><span><i class="o-retrying"></i>retrying</span><span><i class="o-running"></i>running</span><span><i class="k-sleep"></i>sleep</span><span><i class="k-wait"></i>wait</span><span>×n: attempts</span></p>`;
}

function valueCell(s) {
  if ("value" in s) return json(s.value);
  if ("error" in s) return `<span class="muted">Err</span>` + json(s.error);
  if ("payload" in s) return json(s.payload);
  if (s.error_text) return `<pre class="mono">${esc(s.error_text)}</pre>`;
  if (s.last_error) return `<span class="muted">last error</span><pre class="mono">${esc(s.last_error)}</pre>`;
  if (s.value_error || s.payload_error) return `<span class="muted">${esc(s.value_error || s.payload_error)}</span>`;
  if (s.until_ms) return `<span class="muted">until ${fmtTime(s.until_ms)}</span>`;
  return "";
}

async function showInstance(id) {
  document.getElementById("nav").textContent = "instance " + id;
  let doc;
  try { doc = await api("instances/" + encodeURIComponent(id)); }
  catch (e) { app.innerHTML = `<div class="card"><p id="message" class="err">${esc(e.message)}</p><p><a href="#/">back to the list</a></p></div>`; return; }
  const prev = document.getElementById("message");
  const keep = prev ? [prev.textContent, prev.className] : ["", ""];
  const open = document.activeElement && document.activeElement.id;
  const evName = document.getElementById("event-name"), evPayload = document.getElementById("event-payload");
  const keepEv = evName ? [evName.value, evPayload.value] : ["", ""];
  const forkStep = document.getElementById("fork-step");
  const keepFork = forkStep && forkStep.dataset.id === doc.id ? forkStep.value : "";
  if (info === null) { try { info = await api("info"); } catch (e) { info = {actions: true}; } }
  const ro = info.actions ? "" : `disabled title="this endpoint is read-only (no token configured)"`;
  const kind = doc.status.kind;
  const finished = ["completed","failed","cancelled"].includes(kind);
  const canResume = ["blocked","needs-attention","incompatible"].includes(kind);
  const canRetry = ["failed","blocked","needs-attention"].includes(kind) || (kind === "completed" && doc.status.is_err);
  const stepNames = [...new Set(doc.steps.map(s => s.name))];
  const cur = doc.current;
  const steps = doc.steps.map(s => `<tr data-step="${esc(s.name)}"><td class="mono">${esc(s.name)}${s.key ? "[" + esc(s.key) + "]" : (s.occurrence ? "#" + s.occurrence : "")}</td><td>${esc(s.kind)}</td><td title="${fmtTime(s.started_at_ms)}">${fmtTime(s.started_at_ms)}</td><td>${s.finished_at_ms ? fmtDur(s.finished_at_ms - s.started_at_ms) : "…"}</td><td>${s.attempts}</td><td><span class="badge o-${esc(s.outcome)}">${esc(s.outcome)}</span></td><td>${valueCell(s)}</td></tr>`).join("");
  const transitions = doc.transitions.map(t => `<tr><td>${fmtTime(t.at_ms)}</td><td>${esc(t.kind)}</td><td class="muted">${esc(t.error || "")}</td></tr>`).join("");
  const events = doc.events.map(e => `<tr><td class="mono">${esc(e.name)}#${e.seq}</td><td>${fmtTime(e.sent_at_ms)}</td><td>${"payload" in e ? json(e.payload) : esc(e.payload_error || "")}</td></tr>`).join("");
  app.innerHTML = `
  <div class="card"><div class="row-flex"><a href="#/">← instances</a></div>
    <div class="row-flex" style="margin-top:8px"><h2 class="mono" style="margin:0" id="instance-id">${esc(doc.id)}</h2><span id="status">${badge(kind)}</span></div>
    <div class="grid" style="margin-top:10px">
      <span class="muted">workflow</span><span>${esc(doc.workflow)} (version ${doc.version})</span>
      <span class="muted">detail</span><span id="detail">${esc(detail(doc.status)) || "—"}</span>
      <span class="muted">current step</span><span id="current">${cur ? esc(cur.name) + " (" + esc(cur.kind) + ", " + esc(cur.outcome) + (cur.attempts ? ", attempt " + cur.attempts : "") + ")" : "—"}</span>
      <span class="muted">created</span><span>${fmtTime(doc.created_at_ms)}</span>
      <span class="muted">updated</span><span>${fmtTime(doc.updated_at_ms)}</span>
    </div></div>
  <div class="card"><h2>Actions</h2>
    <div class="row-flex">
      <button class="act" id="resume" ${ro} ${canResume ? "" : "disabled"} title="resume a blocked, needs-attention or incompatible instance">Resume</button>
      <button class="act" id="retry" ${ro} ${canRetry ? "" : "disabled"} title="run a failed, blocked or needs-attention instance again from its failed step">Retry</button>
      <button class="act" id="pause" ${ro} ${finished || kind === "paused" ? "disabled" : ""} title="no new step starts until it is unpaused">Pause</button>
      <button class="act" id="unpause" ${ro} ${kind === "paused" ? "" : "disabled"}>Unpause</button>
      <button class="act danger" id="cancel" ${ro} ${finished ? "disabled" : ""}>Cancel</button>
    </div>
    <div class="row-flex" style="margin-top:8px">
      <span class="muted">fork from step</span><select id="fork-step" data-id="${esc(doc.id)}">${stepNames.map(n => `<option ${n === keepFork ? "selected" : ""}>${esc(n)}</option>`).join("")}</select>
      <button class="act" id="fork" ${ro} ${stepNames.length ? "" : "disabled"} title="a new instance: the steps before this one replay, the rest runs">Fork</button>
      <span class="muted">send event</span><input class="f mono" id="event-name" placeholder="name" size="12"><input class="f mono" id="event-payload" placeholder='JSON payload, e.g. {"approved": true}' size="34">
      <button class="act" id="send" ${ro} ${finished ? "disabled" : ""}>Send</button>
    </div>
    <p id="message" class="${esc(keep[1])}">${esc(keep[0])}</p>
    <p class="muted">Actions need the bearer token (top right). Retry runs the instance again from its failed step (the steps before it replay); fork starts a new instance from the chosen step; pause lets no new step start until unpause. Purging old instances is <code>durable purge</code>.</p></div>
  <div class="card"><h2>Timeline</h2>${timeline(doc)}</div>
  <div class="card"><h2>Steps</h2><table id="steps"><thead><tr><th>step</th><th>kind</th><th>start</th><th>duration</th><th>attempts</th><th>outcome</th><th>value</th></tr></thead><tbody>${steps || `<tr><td colspan="7" class="muted">none</td></tr>`}</tbody></table></div>
  <div class="card"><h2>Input and output</h2><h3>input</h3>${"input" in doc ? json(doc.input) : esc(doc.input_error || "")}
    ${"output" in doc ? "<h3>output</h3>" + json(doc.output) : (doc.output_error ? "<h3>output</h3>" + esc(doc.output_error) : "")}</div>
  <div class="card"><h2>Transitions</h2><table><tbody>${transitions}</tbody></table>
    ${events ? `<h3>events</h3><table><tbody>${events}</tbody></table>` : ""}</div>`;
  document.getElementById("event-name").value = keepEv[0];
  document.getElementById("event-payload").value = keepEv[1];
  if (open && document.getElementById(open)) document.getElementById(open).focus();
  const say = (text, ok) => { const m = document.getElementById("message"); m.textContent = text; m.className = ok ? "ok" : "err"; };
  const run = async (what, f) => { try { const r = await f(); say(what + ": " + (typeof r === "string" ? r : "done"), true); } catch (e) { say(what + ": " + e.message, false); } refreshSoon(); };
  const enc = encodeURIComponent(doc.id);
  document.getElementById("resume").onclick = () => run("resume", () => act("instances/" + enc + "/resume"));
  document.getElementById("retry").onclick = () => run("retry", () => act("instances/" + enc + "/retry"));
  document.getElementById("pause").onclick = () => run("pause", () => act("instances/" + enc + "/pause"));
  document.getElementById("unpause").onclick = () => run("unpause", () => act("instances/" + enc + "/unpause"));
  document.getElementById("fork").onclick = () => {
    const step = document.getElementById("fork-step").value;
    run("fork from " + step, async () => "forked as " + (await act("instances/" + enc + "/fork", JSON.stringify({from_step: step}))).new_id);
  };
  document.getElementById("cancel").onclick = () => { if (confirm("Cancel instance " + doc.id + "?")) run("cancel", () => act("instances/" + enc + "/cancel")); };
  document.getElementById("send").onclick = () => {
    const name = document.getElementById("event-name").value.trim();
    const payload = document.getElementById("event-payload").value.trim() || "null";
    run("send event " + name, () => act("instances/" + enc + "/events/" + encodeURIComponent(name), payload));
  };
}

function refreshSoon() { clearTimeout(state.timer); state.timer = setTimeout(render, 300); }
async function render() {
  clearTimeout(state.timer);
  const m = location.hash.match(/^#\/i\/(.+)$/);
  try {
    if (m) await showInstance(decodeURIComponent(m[1])); else await showList();
  } catch (e) {
    app.innerHTML = `<div class="card"><p class="err" id="message">${esc(e.message)}</p></div>`;
  }
  state.timer = setTimeout(render, m ? 2000 : 5000);
}
window.addEventListener("hashchange", render);
render();
</script>
</body>
</html>
"##;
