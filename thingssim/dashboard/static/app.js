"use strict";
// thingssim dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.
// The server sends the fleet's changes as server-sent events (/api/events); this file
// keeps its own bounded copy (the same ring sizes as the server), renders what changed
// once per animation frame, and sends actions as JSON with the session's CSRF token.

const HISTORY = 120;        // sparkline points kept per engine/program
const CONSOLE_LINES = 500;  // console lines kept per program
const LOG_ITEMS = 200;      // engine log lines and scheduler events shown

const S = {
  session: null,
  engines: new Map(),
  programs: new Map(),
  actions: new Map(),
  logs: [],
  schedEvents: [],
  schedState: null,
  now: 0,
  clockOffset: 0,
  selected: null,            // program whose console is shown
  dirtyEngines: new Set(),
  dirtyPrograms: new Set(),
  dirty: new Set(),          // other parts: "actions", "logs", "sched", "broker", "structure"
  frame: 0,
  dragging: null,
  filesPath: "/",
  probe: new URLSearchParams(location.search).has("probe") ? [] : null,
  probePending: [],
};
window.thingsDashboard = S;  // for tests and the latency probe

// ------------------------------------------------------------------ helpers
const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "color") node.style.color = v;  // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}
function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}
const pct = (x) => (x === null || x === undefined ? "-" : `${x.toFixed(1)} %`);
function secs(x) { return x === null || x === undefined ? "-" : x < 1 ? `${(x * 1000).toFixed(1)} ms` : `${x.toFixed(3)} s`; }
function toast(text, isError = false) {
  const box = el("div", { class: isError ? "err" : "", text });
  $("#toast").append(box);
  while ($("#toast").children.length > 3) $("#toast").firstChild.remove();
  setTimeout(() => box.remove(), isError ? 8000 : 4000);
}
function errorText(body, status) {
  if (body && body.error) return `${body.error.code}: ${body.error.message}`;
  return `HTTP ${status}`;
}

async function api(method, path, body, raw = false) {
  const headers = { "X-CSRF-Token": S.session ? S.session.csrf : "" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    if (raw) { init.body = body; headers["Content-Type"] = "application/octet-stream"; }
    else { init.body = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  }
  const response = await fetch(path, init);
  if (response.status === 401) { location.href = "/login"; throw new Error("log in first"); }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(errorText(data, response.status));
  return data;
}

// ------------------------------------------------------------------ state updates
function pushBounded(list, items, limit) {
  for (const x of items) list.push(x);
  if (list.length > limit) list.splice(0, list.length - limit);
}

// seconds since an engine's last report, by the server's clock (0 if dead or never)
function silentFor(e) {
  if (e.status === "dead" || !e.last_seen) return 0;
  if (S.sim) return S.now - e.last_seen;  // simulated seconds: no wall clock drift
  return Date.now() / 1000 + S.clockOffset - e.last_seen;
}
// an engine is marked silent after three of its report periods (at least 2 s)
function staleAfter(e) {
  const s = e.samples.slice(-10);
  const period = s.length >= 2 ? (s[s.length - 1][0] - s[0][0]) / (s.length - 1) : 1;
  return Math.max(2, 3 * period);
}

function applyDelta(d) {
  S.now = d.now;
  S.clockOffset = d.now - Date.now() / 1000;
  if (d.full) {
    S.engines.clear(); S.programs.clear(); S.actions.clear();
    S.logs = []; S.schedEvents = [];
    S.dirty.add("structure");
  }
  for (const [id, e] of Object.entries(d.engines || {})) {
    const old = S.engines.get(id);
    const samples = old ? old.samples : [];
    pushBounded(samples, e.samples, HISTORY);
    if (!old || old.status !== e.status) S.dirty.add("structure");
    S.engines.set(id, { ...e, samples });
    S.dirtyEngines.add(id);
    if (S.probe) for (const s of e.samples) S.probePending.push([id, s[3]]);
  }
  for (const [id, p] of Object.entries(d.programs || {})) {
    const old = S.programs.get(id);
    const samples = old ? old.samples : [];
    const console_ = old ? old.console : [];
    pushBounded(samples, p.samples, HISTORY);
    pushBounded(console_, p.console, CONSOLE_LINES);
    if (!old || old.engine !== p.engine || old.status !== p.status) {
      S.dirty.add("structure");
      if (old && old.engine) S.dirtyEngines.add(old.engine);
      if (p.engine) S.dirtyEngines.add(p.engine);
    }
    S.programs.set(id, { ...p, samples, console: console_ });
    S.dirtyPrograms.add(id);
  }
  for (const id of d.removed || []) { S.programs.delete(id); S.dirty.add("structure"); }
  for (const a of d.actions || []) { S.actions.set(a.id, a); S.dirty.add("actions"); }
  if ((d.logs || []).length) { pushBounded(S.logs, d.logs, LOG_ITEMS); S.dirty.add("logs"); }
  if ((d.scheduler_events || []).length) {
    pushBounded(S.schedEvents, d.scheduler_events, 1000); S.dirty.add("sched");
  }
  if (d.scheduler_state) { S.schedState = d.scheduler_state; S.dirty.add("sched"); }
  if (d.broker) { S.broker = d.broker; S.dirty.add("broker"); }
  if (d.sim) { S.sim = d.sim; S.dirty.add("sim"); }
  schedule();
}

function schedule() {
  if (!S.frame) S.frame = requestAnimationFrame(render);
}

// ------------------------------------------------------------------ rendering
function sparkline(samples, index, kind) {
  const w = 120, h = 26;
  const values = samples.map((s) => s[index]).filter((v) => v !== null && v !== undefined);
  const node = svg("svg", { class: `spark ${kind}`, viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" });
  if (values.length < 2) return node;
  let lo = kind === "cpu" ? 0 : Math.min(...values);
  let hi = Math.max(...values, kind === "cpu" ? 1 : lo + 1);
  if (hi - lo < 1e-9) hi = lo + 1;
  const n = values.length, step = w / (HISTORY - 1), x0 = w - step * (n - 1);
  const points = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(h - 2 - (v - lo) / (hi - lo) * (h - 4)).toFixed(1)}`);
  node.append(svg("polyline", { points: points.join(" ") }));
  return node;
}

function metric(label, samples, index, kind, text) {
  return el("div", { class: "metric" }, el("span", { class: "label", text: label }),
    sparkline(samples, index, kind), el("span", { class: "value", text }));
}

function engineCard(e) {
  const last = e.samples.length ? e.samples[e.samples.length - 1] : null;
  const silent = silentFor(e);
  const card = el("div", { class: `card s-${e.status}`, "data-engine": e.id, "data-status": e.status });
  card.append(el("div", { class: "top" }, el("span", { class: "name", text: e.id }),
    el("span", { class: `badge s-${e.status}`, text: e.status })));
  card.append(el("div", { class: "device", text: (e.device || "device not given") +
    (e.memory_limit ? ` · limit ${e.memory_limit} MB` : "") }));
  if (silent > staleAfter(e)) card.append(el("div", { class: "stale", text: `no report for ${silent.toFixed(0)} s` }));
  const cpuLabel = e.cpu_source === "programs" ? "CPU*" : "CPU";
  card.append(metric(cpuLabel, e.samples, 1, "cpu", last ? pct(last[1]) : "-"));
  card.append(metric("mem", e.samples, 2, "mem", last ? bytes(last[2]) : "-"));
  const chips = el("div", { class: "chips" });
  const readOnly = !!(S.session && S.session.read_only);
  for (const p of S.programs.values()) {
    if (p.engine !== e.id || !["Running", "Paused", "unknown"].includes(p.status)) continue;
    chips.append(el("span", {
      class: `chip s-${p.status}${S.selected === p.id ? " sel" : ""}`, draggable: readOnly ? "false" : "true",
      "data-program": p.id, title: readOnly ? `${p.id}: ${p.status}` : `${p.id}: ${p.status} (drag onto another engine to migrate)`,
      text: p.id, onclick: () => select(p.id),
      ondragstart: (ev) => { S.dragging = p.id; ev.dataTransfer.setData("text/plain", p.id); ev.dataTransfer.effectAllowed = "move"; },
      ondragend: () => { S.dragging = null; schedule(); },
    }));
  }
  card.append(chips);
  card.title = e.cpu_source === "programs" ? "CPU*: this engine reports no CPU of its own; the sum of its running programs' CPU" : "";
  if (readOnly) return card;  // a simulation being followed takes no actions
  card.addEventListener("dragover", (ev) => { ev.preventDefault(); card.classList.add("drop"); });
  card.addEventListener("dragleave", () => card.classList.remove("drop"));
  card.addEventListener("drop", (ev) => {
    ev.preventDefault(); card.classList.remove("drop");
    const iid = ev.dataTransfer.getData("text/plain") || S.dragging;
    S.dragging = null;
    if (!iid) return;
    const p = S.programs.get(iid);
    if (p && p.engine !== e.id) migrate(iid, e.id);
  });
  return card;
}

function cardKey(e) {
  const silent = silentFor(e);
  const stale = silent > staleAfter(e) ? Math.floor(silent) : 0;
  const chips = [...S.programs.values()].filter((p) => p.engine === e.id).map((p) => `${p.id}:${p.status}`).join(",");
  return `${e.status}|${e.device}|${e.memory_limit}|${e.cpu_source}|${stale}|${chips}|${S.selected}`;
}

// A card is rebuilt when what it shows besides its metrics changed; otherwise only its
// two metric rows are replaced (so a chip under the mouse stays the same element).
function updateCard(card, e) {
  const key = cardKey(e);
  if (card.dataset.key !== key) {
    const fresh = engineCard(e);
    fresh.dataset.key = key;
    card.replaceWith(fresh);
    return fresh;
  }
  const last = e.samples.length ? e.samples[e.samples.length - 1] : null;
  const metrics = card.querySelectorAll(".metric");
  metrics[0].replaceWith(metric(e.cpu_source === "programs" ? "CPU*" : "CPU", e.samples, 1, "cpu", last ? pct(last[1]) : "-"));
  metrics[1].replaceWith(metric("mem", e.samples, 2, "mem", last ? bytes(last[2]) : "-"));
  return card;
}

function renderEngines() {
  const box = $("#engines");
  const ids = [...S.engines.keys()].sort();
  $("#engine-count").textContent = `(${ids.length}: ${ids.filter((i) => S.engines.get(i).status !== "dead").length} alive)`;
  const existing = new Map([...box.children].map((c) => [c.dataset.engine, c]));
  const order = [...box.children].map((c) => c.dataset.engine).join(",");
  if (order !== ids.join(",")) {
    box.replaceChildren(...ids.map((id) => {
      const card = existing.get(id) || engineCard(S.engines.get(id));
      if (!existing.has(id)) card.dataset.key = cardKey(S.engines.get(id));
      return card;
    }));
  }
  const all = S.dirty.has("structure");
  for (const id of ids) {
    if (!all && !S.dirtyEngines.has(id)) continue;
    const card = box.querySelector(`.card[data-engine="${CSS.escape(id)}"]`);
    if (card) updateCard(card, S.engines.get(id));
  }
  const select_ = $("#run-engine");
  const alive = ids.filter((i) => S.engines.get(i).status !== "dead");
  if (select_.dataset.ids !== alive.join(",")) {
    const keep = select_.value;
    select_.replaceChildren(...alive.map((id) => el("option", { value: id, text: id })));
    if (alive.includes(keep)) select_.value = keep;
    select_.dataset.ids = alive.join(",");
  }
}

function targetSelect(p, multiple) {
  const s = el("select", { class: multiple ? "spawn-target" : "migrate-target", "aria-label": multiple ? "spawn to" : "migrate to" });
  for (const id of [...S.engines.keys()].sort()) {
    const e = S.engines.get(id);
    if (id === p.engine || e.status === "dead") continue;
    s.append(el("option", { value: id, text: id }));
  }
  return s;
}

function programRow(p) {
  const live = p.status === "Running" || p.status === "Paused";
  const last = p.samples.length ? p.samples[p.samples.length - 1] : null;
  const tr = el("tr", { "data-program": p.id, "data-status": p.status, "data-engine": p.engine || "", class: S.selected === p.id ? "sel" : "" });
  tr.append(el("td", {}, el("a", { class: "prog", text: p.id, title: "show its console", onclick: () => select(p.id) })));
  const status = el("td", {}, el("span", { class: `badge s-${p.status}`, text: p.status }));
  if (p.error) status.append(el("div", { class: "err", text: p.error.split("\n").slice(-2).join(" ") }));
  tr.append(status);
  tr.append(el("td", { text: p.engine || "-" }));
  tr.append(el("td", { class: "m" }, el("div", { class: "metric" }, sparkline(p.samples, 1, "cpu"), el("span", { class: "value", text: last ? pct(last[1]) : "-" }))));
  tr.append(el("td", { class: "m" }, el("div", { class: "metric" }, sparkline(p.samples, 2, "mem"), el("span", { class: "value", text: last ? bytes(last[2]) : "-" }))));
  const actions = el("td", { class: "actions" });
  if (live && S.session && S.session.read_only) actions.append(el("span", { class: "muted", text: "read-only" }));
  else if (live) {
    actions.append(p.status === "Paused"
      ? el("button", { class: "resume", text: "resume", onclick: () => act(p.id, "resume") })
      : el("button", { class: "pause", text: "pause", onclick: () => act(p.id, "pause") }));
    actions.append(el("button", { class: "kill", text: "kill", onclick: () => act(p.id, "kill") }));
    const m = targetSelect(p, false);
    if (m.options.length) {
      actions.append(" ", m, el("button", { class: "migrate", text: "migrate", onclick: () => migrate(p.id, m.value) }));
      const sp = targetSelect(p, true);
      actions.append(" ", sp, el("button", { class: "spawn", text: "spawn", onclick: () => spawn(p.id, [sp.value]) }));
    }
  }
  tr.append(actions);
  return tr;
}

function rowKey(p) {
  const targets = [...S.engines.values()].filter((e) => e.status !== "dead").map((e) => e.id).sort().join(",");
  return `${p.status}|${p.engine}|${p.error}|${targets}|${S.selected === p.id}`;
}

// A row is rebuilt only when its status, engine, error or the possible targets changed
// (so a target picked in its select survives the next resource report); otherwise only
// its two metric cells are replaced.
function updateRow(tr, p) {
  const key = rowKey(p);
  if (tr.dataset.key !== key) {
    const fresh = programRow(p);
    fresh.dataset.key = key;
    tr.replaceWith(fresh);
    return fresh;
  }
  const last = p.samples.length ? p.samples[p.samples.length - 1] : null;
  const cells = tr.querySelectorAll("td.m");
  cells[0].replaceChildren(el("div", { class: "metric" }, sparkline(p.samples, 1, "cpu"), el("span", { class: "value", text: last ? pct(last[1]) : "-" })));
  cells[1].replaceChildren(el("div", { class: "metric" }, sparkline(p.samples, 2, "mem"), el("span", { class: "value", text: last ? bytes(last[2]) : "-" })));
  return tr;
}

function renderPrograms() {
  const body = $("#programs tbody");
  const order = [...S.programs.values()].sort((a, b) => {
    const rank = (p) => (p.status === "Running" || p.status === "Paused" ? 0 : 1);
    return rank(a) - rank(b) || a.id.localeCompare(b.id);
  });
  const existing = new Map([...body.children].map((r) => [r.dataset.program, r]));
  if ([...body.children].map((r) => r.dataset.program).join(",") !== order.map((p) => p.id).join(",")) {
    body.replaceChildren(...order.map((p) => {
      const tr = existing.get(p.id) || programRow(p);
      if (!existing.has(p.id)) tr.dataset.key = rowKey(p);
      return tr;
    }));
  }
  const all = S.dirty.has("structure");
  for (const p of order) {
    if (!all && !S.dirtyPrograms.has(p.id)) continue;
    const tr = body.querySelector(`tr[data-program="${CSS.escape(p.id)}"]`);
    if (tr) updateRow(tr, p);
  }
}

function renderConsole() {
  const pre = $("#console-lines");
  const p = S.selected ? S.programs.get(S.selected) : null;
  if (!p) { $("#console-title").textContent = "(pick a program)"; pre.textContent = ""; return; }
  if (!S.dirtyPrograms.has(p.id) && pre.dataset.program === p.id) return;
  $("#console-title").textContent = `${p.id} on ${p.engine || "?"} (last ${p.console.length} of ${p.lines} lines)`;
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
  pre.textContent = p.console.join("\n");
  pre.dataset.program = p.id;
  pre.dataset.lines = String(p.lines);
  if (atBottom || pre.dataset.scrolled !== p.id) { pre.scrollTop = pre.scrollHeight; pre.dataset.scrolled = p.id; }
}

function describeResult(a) {
  const r = a.result;
  if (a.state === "pending") return "…";
  if (a.error) return null;
  if (r && r.migration) {
    const m = r.migration;
    return `moved ${m.source} → ${r.engine} in ${secs(m.total_s)}: snapshot ${secs(m.snapshot_s)}` +
      (m.snapshot_bytes ? ` (${bytes(m.snapshot_bytes)})` : "") +
      `, transfer ${secs(m.transfer_s)}, restore ${secs(m.restore_s)}, commit ${secs(m.commit_s)}`;
  }
  if (r && typeof r === "object" && r.id && r.engine) return `${r.id} is ${r.status} on ${r.engine}`;
  if (r && typeof r === "object" && r.token) return `application ${r.token}: ${r.status || "accepted"}`;
  if (Array.isArray(r)) return r.map((x) => (x && x.id ? `${x.id} on ${x.engine}` : JSON.stringify(x))).join(", ");
  return typeof r === "string" ? r : JSON.stringify(r);
}

function renderActions() {
  const list = $("#actions");
  const items = [...S.actions.values()].sort((a, b) => b.id - a.id).slice(0, 100);
  list.replaceChildren(...items.map((a) => {
    const args = Object.entries(a.args).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`).join(" ");
    const li = el("li", { class: a.state, "data-action": a.id, "data-kind": a.kind, "data-state": a.state },
      el("strong", { text: `${a.kind} ` }), el("span", { text: args }), el("br"));
    const text = describeResult(a);
    if (a.error) li.append(el("span", { class: "err", text: `${a.error.code}: ${a.error.message}` }));
    else li.append(el("span", { class: "phases", text }));
    return li;
  }));
}

function renderLogs() {
  const list = $("#engine-logs");
  list.replaceChildren(...S.logs.slice(-LOG_ITEMS).reverse().map((l) =>
    el("li", {}, el("strong", { text: `${l.engine}: ` }), el("span", { text: l.text }))));
}

// a simulation followed while it runs (thingssim sim --dashboard): its clock, its end
function renderSim() {
  const s = S.sim;
  const speed = s.speed ? `, ${s.speed.toFixed(1)}x real time` : "";
  let text = `simulated t = ${s.t.toFixed(1)} s of ${s.duration} s${speed}`;
  if (s.done) text = `${s.error ? "failed" : "finished"}: ${text}${s.error ? ` (${s.error})` : ""}`;
  $("#simclock").textContent = text;
  $("#simclock").dataset.done = s.done ? "1" : "";
  $("#sim-name").textContent = `Simulation ${s.name} (seed ${s.seed})`;
  const results = s.done && s.results;
  $("#sim-results").hidden = !results;
  if (results) {
    $("#sim-results").textContent = `Open the results of ${s.out}`;
    document.querySelectorAll(".results-only").forEach((n) => { n.hidden = false; });
  }
}

function render() {
  S.frame = 0;
  const view = currentTab();
  if (S.dirty.has("sim") && S.sim) renderSim();
  if (S.dirty.has("broker") && S.broker) {
    $("#broker").classList.toggle("up", !!S.broker.connected);
    $("#broker-text").textContent = `${S.broker.connected ? "connected" : "disconnected"} ${S.broker.url || ""}`;
  }
  if (view === "fleet") {
    if (!S.dragging) { renderEngines(); renderPrograms(); }
    renderConsole();
    if (S.dirty.has("actions")) renderActions();
    if (S.dirty.has("logs")) renderLogs();
  }
  if (view === "apps" && S.dirty.has("sched")) renderApps();
  if (S.dragging && view === "fleet") return;  // keep the cards still while dragging
  S.dirtyEngines.clear(); S.dirtyPrograms.clear(); S.dirty.clear();
  if (S.probe && S.probePending.length) {
    const shown = performance.timeOrigin + performance.now();
    for (const [id, ts] of S.probePending) S.probe.push([id, ts, shown]);
    S.probePending = [];
    if (S.probe.length > 50000) S.probe.splice(0, S.probe.length - 50000);
  }
}

// ------------------------------------------------------------------ actions
function select(iid) {
  S.selected = iid; S.dirty.add("structure"); S.dirtyPrograms.add(iid); schedule();
}
async function perform(label, fn) {
  try {
    const record = await fn();
    const text = describeResult(record);
    toast(`${label}: ${text || "done"}`);
    return record;
  } catch (err) {
    toast(`${label}: ${err.message}`, true);
    return null;
  }
}
const act = (iid, op) => perform(`${op} ${iid}`, () => api("POST", `/api/programs/${encodeURIComponent(iid)}/${op}`));
const migrate = (iid, target) => perform(`migrate ${iid} → ${target}`, () => api("POST", `/api/programs/${encodeURIComponent(iid)}/migrate`, { target }));
const spawn = (iid, targets) => perform(`spawn ${iid} → ${targets.join(",")}`, () => api("POST", `/api/programs/${encodeURIComponent(iid)}/spawn`, { targets }));

async function runProgram() {
  const engine = $("#run-engine").value;
  const file = $("#run-file").files[0];
  const gfsPath = $("#run-gfs").value.trim();
  const name = $("#run-name").value.trim();
  if (!engine) { toast("no live engine to run on", true); return; }
  let body;
  if (file) body = { engine, source: await file.text(), code_name: name || file.name };
  else if (gfsPath) body = { engine, gfs_path: gfsPath, code_name: name || undefined };
  else { toast("choose a file to upload, or a path in the file system", true); return; }
  const record = await perform(`run on ${engine}`, () => api("POST", "/api/programs", body));
  if (record && record.result && record.result.id) select(record.result.id);
  $("#run-file").value = "";
}

async function loadCodes() {
  try {
    const entries = await api("GET", "/api/files?path=/codes");
    $("#gfs-codes").replaceChildren(...entries.filter((e) => e.kind === "file").map((e) => el("option", { value: e.path })));
  } catch (err) { /* no file service, or no /codes: typing a path still works */ }
}

// ------------------------------------------------------------------ applications
function renderApps() {
  const body = $("#apps tbody");
  const state = S.schedState;
  $("#sched-info").textContent = state ? `scheduler ${state.id}: ${state.holder || "?"} ${state.role || ""} (term ${state.term})` : "no scheduler state seen yet";
  const apps = state ? Object.values(state.apps || {}) : [];
  body.replaceChildren(...apps.map((a) => {
    const placements = Object.values(a.instances || {}).map((i) => `${i.id} → ${i.engine || "-"} (${i.status})`).join("\n");
    const ops = el("td", { class: "actions" });
    for (const op of ["pause", "resume", "kill"]) {
      ops.append(el("button", { class: op, text: op, onclick: () => perform(`${op} ${a.token}`, () => api("POST", `/api/apps/${encodeURIComponent(a.token)}/${op}`)).then(refreshApps) }));
    }
    return el("tr", { "data-app": a.token }, el("td", { text: a.token }), el("td", { text: a.name }),
      el("td", {}, el("span", { class: `badge s-${a.status}`, text: a.status }), a.reason ? el("div", { class: "err", text: a.reason }) : null),
      el("td", {}, el("pre", { text: placements })), ops);
  }));
  $("#sched-events").replaceChildren(...S.schedEvents.slice(-LOG_ITEMS).reverse().map((ev) =>
    el("li", {}, el("strong", { text: `${ev.type} ` }), el("span", { text: JSON.stringify(ev.data) }))));
}
async function refreshApps() {
  try {
    const status = await api("GET", "/api/apps");
    S.schedState = status; S.dirty.add("sched"); schedule();
  } catch (err) { $("#sched-info").textContent = err.message; }
}
async function submitApp() {
  const file = $("#app-file").files[0];
  if (!file) { toast("choose an application file (TOML or JSON)", true); return; }
  const text = await file.text();
  await perform(`submit ${file.name}`, () => fetch(`/api/apps?name=${encodeURIComponent(file.name)}`, {
    method: "POST", body: text, credentials: "same-origin",
    headers: { "X-CSRF-Token": S.session.csrf, "Content-Type": "text/plain" },
  }).then(async (r) => { const d = await r.json(); if (!r.ok) throw new Error(errorText(d, r.status)); return d; }));
  refreshApps();
}

// ------------------------------------------------------------------ files
async function listFiles(path) {
  const ticket = (S.filesTicket = (S.filesTicket || 0) + 1);
  try {
    const entries = await api("GET", `/api/files?path=${encodeURIComponent(path)}`);
    if (ticket !== S.filesTicket) return;  // a later listing was asked for meanwhile
    S.filesPath = path;
    $("#files-path").textContent = path;
    $("#files tbody").replaceChildren(...entries.map((e) => {
      const name = e.kind === "dir"
        ? el("a", { class: "prog", text: `${e.name}/`, onclick: () => listFiles(e.path) })
        : el("span", { text: e.name });
      const link = e.kind === "file" ? el("a", { href: `/api/files/download?path=${encodeURIComponent(e.path)}`, download: e.name, text: "download" }) : null;
      return el("tr", { "data-path": e.path, "data-kind": e.kind }, el("td", {}, name), el("td", { text: e.kind }),
        el("td", { text: e.kind === "file" ? bytes(e.size) : "" }),
        el("td", { text: e.mtime > 1e8 ? new Date(e.mtime * 1000).toLocaleString() : `t=${e.mtime}` }), el("td", {}, link));
    }));
  } catch (err) { if (ticket === S.filesTicket) toast(`${path}: ${err.message}`, true); }
}
async function uploadFile() {
  const file = $("#files-upload").files[0];
  if (!file) { toast("choose a file to upload", true); return; }
  const target = `${S.filesPath.replace(/\/$/, "")}/${file.name}`;
  const ticket = S.filesTicket;
  await perform(`upload ${target}`, () => api("PUT", `/api/files?path=${encodeURIComponent(target)}`, file, true)
    .then((r) => ({ state: "ok", result: `${r.path}: ${bytes(r.size)}` })));
  $("#files-upload").value = "";
  if (ticket === S.filesTicket) listFiles(S.filesPath);  // unless the user went elsewhere
  loadCodes();
}
async function makeFolder() {
  const name = $("#files-newdir").value.trim();
  if (!name) return;
  const path = name.startsWith("/") ? name : `${S.filesPath.replace(/\/$/, "")}/${name}`;
  const ticket = S.filesTicket;
  await perform(`mkdir ${path}`, () => api("POST", "/api/files/mkdir", { path }).then((r) => ({ state: "ok", result: r.path })));
  $("#files-newdir").value = "";
  if (ticket === S.filesTicket) listFiles(S.filesPath);  // unless the user went elsewhere
}

// ------------------------------------------------------------------ results
const COLORS = ["#2f5fd0", "#e07b00", "#1f9d55", "#7a4fd6", "#d64545", "#0f8b8d", "#a05a2c", "#c2185b"];
function axisX(g, x0, x1, w, y, duration) {
  const ticks = 8;
  for (let i = 0; i <= ticks; i++) {
    const t = duration * i / ticks, x = x0 + (x1 - x0) * i / ticks;
    g.append(svg("line", { x1: x, x2: x, y1: 14, y2: y, stroke: "#e6e9ef" }));
    g.append(svg("text", { x, y: y + 12, "text-anchor": "middle" }, document.createTextNode(`${t.toFixed(t < 10 ? 1 : 0)} s`)));
  }
}
function renderTimeline(r) {
  const boards = r.board_names, duration = Math.max(r.duration, 1e-6);
  const W = Math.max(900, $("#view-results").clientWidth - 40), left = 90, right = W - 12, rowH = 26;
  const H = 20 + rowH * boards.length + 22;
  const X = (t) => left + (right - left) * (t / duration);
  const Y = (b) => 18 + rowH * boards.indexOf(b) + rowH / 2;
  const root = svg("svg", { width: W, height: H, id: "timeline-svg" });
  const g = svg("g");
  root.append(g);
  axisX(g, left, right, W, H - 20, duration);
  boards.forEach((b) => {
    g.append(svg("text", { x: 4, y: Y(b) + 4 }, document.createTextNode(b)));
    g.append(svg("line", { x1: left, x2: right, y1: Y(b), y2: Y(b), stroke: "#d0d5de" }));
  });
  const programs = [...new Set(r.residence.map((s) => s.program))];
  for (const s of r.residence) {
    if (!boards.includes(s.board)) continue;
    const color = COLORS[programs.indexOf(s.program) % COLORS.length];
    const rect = svg("rect", { x: X(s.start), y: Y(s.board) - 7, width: Math.max(1, X(s.end) - X(s.start)), height: 14, fill: color, opacity: 0.35, class: "residence" });
    rect.append(svg("title", {}, document.createTextNode(`${s.program} on ${s.board} ${s.start.toFixed(2)}–${s.end.toFixed(2)} s`)));
    g.append(rect);
  }
  for (const m of r.migrations) {
    if (!boards.includes(m.source) || !boards.includes(m.target)) continue;
    const t0 = m.started, t1 = m.started + (m.total_s || 0);
    const line = svg("line", { x1: X(t0), y1: Y(m.source), x2: X(t1) + 2, y2: Y(m.target), stroke: m.ok ? "#1f9d55" : "#d64545", "stroke-width": 2, class: "migration", "marker-end": "url(#arrow)" });
    line.append(svg("title", {}, document.createTextNode(`migration ${m.instance_id}: ${m.source} → ${m.target} at ${t0.toFixed(3)} s, ${m.ok ? "ok" : "failed: " + m.error} (snapshot ${secs(m.snapshot_s)}, transfer ${secs(m.transfer_s)}, restore ${secs(m.restore_s)}, commit ${secs(m.commit_s)})`)));
    g.append(line);
  }
  for (const f of r.faults) {
    const y = boards.includes(f.target) ? Y(f.target) : 10;
    const mark = svg("path", { d: `M${X(f.time)},${y - 9} l6,10 l-12,0 z`, fill: "#d64545", class: "fault" });
    mark.append(svg("title", {}, document.createTextNode(`${f.fault} ${f.target} at ${f.time} s`)));
    g.append(mark);
  }
  for (const a of r.actions) {
    const b = boards.includes(a.target) ? a.target : null;
    const mark = svg("circle", { cx: X(a.time), cy: b ? Y(b) + 10 : 10, r: 3.5, fill: a.ok ? "#2f5fd0" : "#d64545", class: "action" });
    mark.append(svg("title", {}, document.createTextNode(`${a.action} ${a.program} → ${a.target} at ${a.time} s: ${a.ok ? "ok" : "failed"} ${a.result || ""}`)));
    g.append(mark);
  }
  const defs = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#1f9d55" })));
  root.prepend(defs);
  $("#timeline").replaceChildren(root);
  $("#timeline-legend").replaceChildren(
    el("span", { text: "bars: where each program ran (" + programs.join(", ") + ")" }),
    el("span", { text: `green lines: ${r.migrations.length} migrations` }),
    el("span", { text: `red triangles: ${r.faults.length} faults` }),
    el("span", { text: `dots: ${r.actions.length} actions` }));
}
function lineChart(title, t, series, unit) {
  const W = 420, H = 120, left = 34, right = W - 8, top = 8, bottom = H - 18;
  const all = series.flatMap((s) => s.values);
  const hi = Math.max(1, ...all);
  const n = Math.max(1, t.length - 1);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg" });
  root.append(svg("text", { x: 2, y: top + 8 }, document.createTextNode(hi.toFixed(hi < 10 ? 1 : 0))));
  root.append(svg("text", { x: 2, y: bottom }, document.createTextNode("0")));
  root.append(svg("line", { x1: left, x2: right, y1: bottom, y2: bottom, stroke: "#d0d5de" }));
  root.append(svg("text", { x: right, y: H - 4, "text-anchor": "end" }, document.createTextNode(`${t[t.length - 1] || 0} s`)));
  series.forEach((s, i) => {
    const pts = s.values.map((v, j) => `${(left + (right - left) * j / n).toFixed(1)},${(bottom - (bottom - top) * v / hi).toFixed(1)}`);
    root.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: s.color || COLORS[i], "stroke-width": 1.5 }));
  });
  const box = el("div", { class: "small" }, el("h3", { text: title }), root,
    el("div", { class: "stats" }, ...series.map((s, i) => el("span", { text: `■ ${s.name}  `, color: s.color || COLORS[i] }))));
  return box;
}
function renderLoad(r) {
  const box = $("#load");
  box.className = "smalls";
  const load = r.load;
  box.replaceChildren(...Object.entries(load.boards).map(([b, s]) => lineChart(
    `${b}: messages/s (bucket ${load.bucket_s} s), programs`, load.t,
    [{ name: "sent/s", values: s.sent, color: "#2f5fd0" }, { name: "received/s", values: s.received, color: "#e07b00" },
      { name: "programs", values: s.programs, color: "#1f9d55" }])));
}
function renderLatency(r) {
  $("#latency").replaceChildren(...r.latency.map((h) => {
    const W = 300, H = 110, left = 4, bottom = H - 18;
    const hi = Math.max(...h.counts, 1), n = h.counts.length, bw = (W - 8) / n;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "histogram chart-svg" });
    h.counts.forEach((c, i) => {
      const rect = svg("rect", { x: left + i * bw, y: bottom - (bottom - 6) * c / hi, width: Math.max(1, bw - 1), height: (bottom - 6) * c / hi, fill: "#2f5fd0" });
      rect.append(svg("title", {}, document.createTextNode(`${h.edges[i].toFixed(3)}–${h.edges[i + 1].toFixed(3)} ms: ${c}`)));
      root.append(rect);
    });
    root.append(svg("text", { x: left, y: H - 4 }, document.createTextNode(`${h.edges[0].toFixed(2)} ms`)));
    root.append(svg("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, document.createTextNode(`${h.edges[h.edges.length - 1].toFixed(1)} ms (log)`)));
    return el("div", { class: "small", "data-kind": h.kind }, el("h3", { text: `${h.kind}: ${h.count} deliveries` }), root,
      el("div", { class: "stats", text: `p50 ${h.p50.toFixed(3)} ms · p95 ${h.p95.toFixed(3)} ms · p99 ${h.p99.toFixed(3)} ms · max ${h.max.toFixed(3)} ms` }));
  }));
}
function fillTable(table, rows, columns) {
  columns = columns || (rows.length ? Object.keys(rows[0]) : []);
  $("thead", table).replaceChildren(el("tr", {}, ...columns.map((c) => el("th", { text: c }))));
  $("tbody", table).replaceChildren(...rows.map((row) => el("tr", {}, ...columns.map((c) => {
    const v = row[c];
    return el("td", { text: v === null || v === undefined ? "" : typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v) });
  }))));
}
async function loadResults(run) {
  let r;
  try {
    r = await api("GET", `/api/results${run ? `?run=${encodeURIComponent(run)}` : ""}`);
  } catch (err) { toast(`results: ${err.message}`, true); return; }
  S.results = r;
  $("#results-name").textContent = run ? `${run}` : r.name;
  $("#results-back").hidden = !run;
  const scenario = r.kind === "scenario";
  document.querySelectorAll(".scenario-only").forEach((n) => { n.hidden = !scenario; });
  $("#results-info").textContent = scenario
    ? `${r.board_names.length} boards, ${r.duration.toFixed(1)} s simulated, ${r.migrations.length} migrations, ${r.faults.length} faults, ${r.actions.length} actions, ${r.messages} message events`
    : r.kind;
  const runs = r.runs || [];
  $("#results-runs").replaceChildren(...(runs.length ? [el("h2", { text: "Runs" }), el("ul", {}, ...runs.map((x) =>
    el("li", {}, x.open ? el("a", { class: "prog", text: x.folder, onclick: () => loadResults(x.folder) }) : el("span", { text: x.folder || "?" }),
      el("span", { text: ` ${x.scenario || ""} seed ${x.seed ?? ""} ${x.ok === false ? "FAILED" : ""}` }))))] : []));
  if (scenario) {
    renderTimeline(r); renderLoad(r); renderLatency(r);
    fillTable($("#results-migrations"), r.migrations, ["instance_id", "source", "target", "started", "snapshot_s", "snapshot_bytes", "transfer_s", "restore_s", "commit_s", "total_s", "ok", "error"]);
  }
  $("#figures-title").hidden = !r.figures.length;
  $("#figures").replaceChildren(...r.figures.map((f) => el("figure", {},
    el("img", { src: `/api/results/figures/${encodeURIComponent(f)}${run ? `?run=${encodeURIComponent(run)}` : ""}`, alt: f, loading: "lazy" }),
    el("figcaption", { text: f }))));
  const summary = r.summary || [];
  $("#summary-title").hidden = !summary.length;
  $("#results-summary").hidden = !summary.length;
  fillTable($("#results-summary"), summary.slice(0, 100));
}

// ------------------------------------------------------------------ tabs and start
function currentTab() { return (location.hash || "").slice(1) || (S.session && S.session.live ? "fleet" : "results"); }
function showTab() {
  const tab = currentTab();
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== `view-${tab}`; });
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  S.dirty.add("structure"); S.dirty.add("actions"); S.dirty.add("logs"); S.dirty.add("sched");
  for (const id of S.engines.keys()) S.dirtyEngines.add(id);
  if (tab === "files") listFiles(S.filesPath);
  if (tab === "apps") refreshApps();
  if (tab === "results" && !S.results) loadResults();
  schedule();
}

function connectEvents() {
  const source = new EventSource("/api/events");
  source.onmessage = (ev) => applyDelta(JSON.parse(ev.data));
  source.onerror = () => { S.broker = { ...(S.broker || {}), connected: false }; S.dirty.add("broker"); schedule(); };
  S.source = source;
}

async function start() {
  S.session = await api("GET", "/api/session");
  document.querySelectorAll(".live-only").forEach((n) => { n.hidden = !S.session.live; });
  document.querySelectorAll(".results-only").forEach((n) => { n.hidden = !S.session.results; });
  $("#logout").hidden = !S.session.login;
  if (S.session.sim) {  // a running simulation: the Fleet view only, read-only
    S.sim = S.session.sim;
    document.body.classList.add("sim");
    for (const sel of ["#broker", "#run-form", 'nav [data-tab="apps"]', 'nav [data-tab="files"]']) $(sel).hidden = true;
    if (!S.sim.done || !S.sim.results) document.querySelectorAll(".results-only").forEach((n) => { n.hidden = true; });
    $("#simclock").hidden = false; $("#sim-banner").hidden = false;
    renderSim();
  }
  $("#logout").addEventListener("click", async () => { await api("POST", "/logout"); location.href = "/login"; });
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => { location.hash = b.dataset.tab; }));
  window.addEventListener("hashchange", showTab);
  $("#run-go").addEventListener("click", runProgram);
  $("#app-submit").addEventListener("click", submitApp);
  $("#app-refresh").addEventListener("click", refreshApps);
  $("#files-up").addEventListener("click", () => listFiles(S.filesPath.replace(/\/[^/]*\/?$/, "") || "/"));
  $("#files-refresh").addEventListener("click", () => listFiles(S.filesPath));
  $("#files-put").addEventListener("click", uploadFile);
  $("#files-mkdir").addEventListener("click", makeFolder);
  $("#results-back").addEventListener("click", () => loadResults());
  if (S.session.live) {
    connectEvents(); if (!S.session.sim) loadCodes();
    // an engine that stops reporting sends nothing: look at the silent ones every second
    setInterval(() => {
      for (const e of S.engines.values()) if (silentFor(e) > staleAfter(e)) S.dirtyEngines.add(e.id);
      if (S.dirtyEngines.size) schedule();
    }, 1000);
  }
  showTab();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", () => { start().catch((err) => toast(err.message, true)); });
