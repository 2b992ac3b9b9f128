// daskflow UI: draws the four pages from the JSON API (the CLI's -o json shapes).
// Plain JavaScript, no build step, no network beyond this server. Data is put in the
// DOM with textContent only (run names, messages and logs are user text).
"use strict";

const BASE = document.querySelector('meta[name="daskflow-base"]').content;
const PAGE = document.body.dataset.page;
const PAGE_ID = document.body.dataset.id;
const POLL_MS = 2000;
const main = document.getElementById("main");
const statusLine = document.getElementById("status");

// -- small helpers ------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path) {
  const res = await fetch(BASE + "/api/" + path, {credentials: "same-origin"});
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return {body, next: res.headers.get("X-Next-Cursor")};
}

function pad(n, w) { return String(n).padStart(w || 2, "0"); }
function when(ts) {
  if (!ts) return "-";
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return today ? time : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}
function seconds(d) {
  if (d === null || d === undefined || isNaN(d)) return "-";
  if (d < 1) return (d * 1000).toFixed(1) + " ms";
  if (d < 120) return d.toFixed(2) + " s";
  return Math.floor(d / 60) + " min " + Math.round(d % 60) + " s";
}
function bytes(n) {
  if (n === null || n === undefined || isNaN(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? n.toFixed(1) + " " + units[i] : n + " B";
}
function resourcesText(r) {
  if (!r || !r.resolution) return "-";
  if (r.resolution === "killed") return `killed for memory: worker RSS ${bytes(r.worker_rss_bytes)} at the last sample, limit ${bytes(r.memory_limit_bytes)}`;
  const whose = r.resolution === "run" ? "this run" : `its chunk of ${r.chunk_runs} runs (CPU: its share)`;
  return `CPU ${seconds(r.cpu_seconds)}, peak RSS increase ${bytes(r.peak_rss_increase_bytes)} (${whose}), worker RSS ${bytes(r.worker_rss_bytes)}`;
}
function span(start, end) { return start && end ? seconds(end - start) : "-"; }
function stateBadge(name, type, label) {
  return h("span", {class: `state s-${type} s-${name}`, title: type}, label || name);
}
const TYPE_OF = {Completed: "COMPLETED", Cached: "COMPLETED", Failed: "FAILED", NotReady: "FAILED",
  TimedOut: "FAILED", Crashed: "CRASHED", Cancelled: "CANCELLED", Running: "RUNNING", Retrying: "RUNNING",
  Pending: "PENDING", Scheduled: "SCHEDULED", AwaitingRetry: "SCHEDULED"};
function counts(c, flowRunId) {
  const names = Object.keys(c || {}).sort();
  if (!names.length) return h("span", {class: "muted"}, "none");
  // with a flow run, each count links to those runs (the failed ones above all)
  return h("span", {class: "counts"}, names.map(n => {
    const badge = stateBadge(n, TYPE_OF[n] || "PENDING", `${c[n]} ${n}`);
    return flowRunId ? h("a", {href: `${BASE}/runs?flow_run=${flowRunId}&state=${n}`, class: "count-link"}, badge) : badge;
  }));
}
function short(id) { return id ? id.slice(0, 8) : "-"; }
function runLink(row) { return h("a", {href: `${BASE}/runs/${row.id}`}, row.name); }
function flowLink(id, label) { return id ? h("a", {href: `${BASE}/flow-runs/${id}`, class: "mono"}, label || short(id)) : "-"; }
function table(headers, rows) {
  const head = h("tr", {}, headers.map(c => h("th", {class: c.endsWith("#") ? "num" : null}, c.replace(/#$/, ""))));
  return h("table", {}, h("thead", {}, head), h("tbody", {}, rows));
}
function td(value, cls) { return h("td", {class: cls}, value); }
function empty(text) { return h("div", {class: "empty"}, text); }
function render(...parts) { main.replaceChildren(...parts.flat(Infinity).filter(p => p !== null && p !== undefined)); }
function setStatus(text) { statusLine.textContent = text; }
function fail(err) { render(h("pre", {class: "error"}, String(err.message || err))); }

// Draw now (an error replaces the page), then again every POLL_MS while draw() does not return false.
async function poll(draw) {
  let busy = false;
  const more = await draw();
  setStatus("updated " + when(Date.now() / 1000));
  if (more === false) return;
  const timer = setInterval(async () => {
    if (busy) return;
    busy = true;
    try { if (await draw() === false) clearInterval(timer); setStatus("updated " + when(Date.now() / 1000)); }
    catch (err) { setStatus("error: " + err.message); }
    finally { busy = false; }
  }, POLL_MS);
}

function logTable(records, withRun) {
  if (!records.length) return empty("no log records");
  const headers = withRun ? ["time", "level", "run", "message"] : ["time", "level", "message"];
  return table(headers, records.map(r => h("tr", {},
    td(when(r.timestamp), "mono"), td(r.level, "lvl-" + r.level),
    withRun ? td(r.run_id ? h("a", {href: `${BASE}/runs/${r.run_id}`}, r.run) : "flow run") : null,
    td(h("span", {class: "mono"}, r.message)))));
}

// Artifacts: markdown is shown as its text (never as HTML: it is user text), tables as tables,
// links as links (http(s) only).
function artifactBody(a) {
  const d = a.data;
  if (a.type === "table") {
    let headers = [], rows = [];
    if (Array.isArray(d) && d.length && d.every(r => r && typeof r === "object" && !Array.isArray(r))) {
      headers = [...new Set(d.flatMap(r => Object.keys(r)))];
      rows = d.map(r => headers.map(k => r[k]));
    } else if (d && typeof d === "object" && !Array.isArray(d)) {
      headers = Object.keys(d);
      rows = (d[headers[0]] || []).map((_, i) => headers.map(k => d[k][i]));
    } else if (Array.isArray(d)) {
      rows = d.map(r => Array.isArray(r) ? r : [r]);
    }
    return table(headers, rows.map(r => h("tr", {}, r.map(v => td(v === null || v === undefined ? "" : String(v))))));
  }
  if (a.type === "link" && d && /^https?:\/\//.test(d.link || "")) {
    return h("a", {href: d.link, rel: "noopener noreferrer"}, d.link_text || d.link);
  }
  return h("pre", {class: "artifact"}, String(d));
}

function artifactList(items, withRun) {
  if (!items.length) return empty("no artifacts");
  return items.map(a => h("section", {class: "artifact"},
    h("h3", {}, a.key || "(no key)", " ", h("span", {class: "muted"}, a.type),
      withRun && a.task_run_id ? [" · ", h("a", {href: `${BASE}/runs/${a.task_run_id}`, class: "mono"}, short(a.task_run_id))] : null,
      " ", h("span", {class: "muted mono"}, when(a.created))),
    a.description ? h("p", {}, a.description) : null,
    artifactBody(a)));
}

// -- pages ----------------------------------------------------------------------------------
async function flowsPage() {
  document.title = "Flow runs · daskflow";
  await poll(async () => {
    const {body} = await api("flow-runs?limit=100");
    if (!body.length) { render(h("h1", {}, "Flow runs"), empty("no flow runs recorded yet")); return; }
    const rows = body.map(f => h("tr", {},
      td(h("a", {href: `${BASE}/flow-runs/${f.id}`}, f.name || "?")), td(stateBadge(f.state, f.state_type)),
      td(when(f.start), "mono"), td(f.end ? span(f.start, f.end) : seconds(Date.now() / 1000 - f.start) + " …", "num"),
      td(counts(f.counts, f.id)), td(f.task_runs, "num"), td(short(f.id), "mono muted")));
    render(h("h1", {}, "Flow runs"),
      table(["name", "state", "start", "duration#", "task runs per state", "task runs#", "id"], rows));
  });
}

function metricsTable(metrics) {
  if (!metrics.length) return empty("no task runs");
  return table(["task", "runs#", "completed#", "cached#", "failed#", "retried#", "running#", "p50#", "p95#", "max#", "total time#",
                "CPU p50#", "CPU p95#", "CPU max#", "memory p50#", "memory p95#", "memory max#"],
    metrics.map(m => h("tr", {},
      td(h("a", {href: `${BASE}/runs?task=${encodeURIComponent(m.task)}&flow_run=${PAGE_ID}`}, m.task)),
      ...["runs", "completed", "cached"].map(k => td(m[k], "num")),
      td(m.failed ? h("a", {href: `${BASE}/runs?task=${encodeURIComponent(m.task)}&flow_run=${PAGE_ID}&state=FAILED`},
        String(m.failed)) : m.failed, "num"),
      ...["retried", "running"].map(k => td(m[k], "num")),
      ...["p50", "p95", "max", "total", "cpu_p50", "cpu_p95", "cpu_max"].map(k => td(seconds(m[k]), "num")),
      ...["mem_p50", "mem_p95", "mem_max"].map(k => td(bytes(m[k]), "num")))));
}

function timelineChart(bars) {
  if (!bars.length) return empty("no chunks yet");
  const now = Date.now() / 1000;
  const lanes = [...new Set(bars.map(b => b.worker || "client"))].sort();
  const t0 = Math.min(...bars.map(b => b.start || now));
  const t1 = Math.max(...bars.map(b => b.end || now), t0 + 1e-3);
  const W = 1100, left = 190, laneH = 22, H = lanes.length * laneH + 26;
  const x = t => left + (W - left - 10) * ((t - t0) / (t1 - t0));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("width", "100%"); svg.setAttribute("class", "timeline");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el); return el;
  };
  lanes.forEach((lane, i) => add("text", {x: 6, y: i * laneH + 15}, lane.replace(/^tcp:\/\//, "")));
  for (const b of bars) {
    const i = lanes.indexOf(b.worker || "client");
    const x0 = x(b.start || now), x1 = Math.max(x(b.end || now), x0 + 1);
    const r = add("rect", {x: x0, y: i * laneH + 4, width: x1 - x0, height: laneH - 8, rx: 2,
      class: "bar" + (b.end ? "" : " live")});
    // the runs by state: a chunk with one failed run is green with a sliver of red, not all red
    for (const [s0, s1, kind] of (b.segments || [])) {
      if (kind === "COMPLETED") continue;
      const sx0 = Math.max(x(s0), x0), sx1 = Math.min(Math.max(x(s1), sx0 + 1.5), x1);
      add("rect", {x: sx0, y: i * laneH + 4, width: Math.max(sx1 - sx0, 1.5), height: laneH - 8,
        class: `seg seg-${kind}`});
    }
    const t = document.createElementNS(ns, "title");
    t.textContent = `${b.task}: ${b.runs} run(s), ${b.failed} failed, ${span(b.start, b.end || now)}`;
    r.append(t);
  }
  add("text", {x: left, y: H - 6}, when(t0));
  add("text", {x: W - 10, y: H - 6, "text-anchor": "end"}, `+${seconds(t1 - t0)}`);
  return svg;
}

const RETRYABLE = new Set(["FAILED", "CRASHED", "CANCELLED"]);  // `daskflow flow-runs retry` resumes these
// -- the one action: cancel a running flow run (POST; token cookie + CSRF header) ------------------
let actionNote = null;  // the outcome of the last action, shown until the page is left
function cookie(name) {
  const hit = document.cookie.split("; ").find(c => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : "";
}
async function cancelFlowRun(ev, redraw) {
  ev.target.disabled = true;
  ev.target.textContent = "Cancelling…";
  try {
    const res = await fetch(`${BASE}/api/flow-runs/${PAGE_ID}/cancel`, {method: "POST", credentials: "same-origin",
      headers: {"X-XSRFToken": cookie("_xsrf")}});
    const body = await res.json();
    actionNote = res.ok ? `cancel: the flow run is ${body.state}` : `cancel refused: ${body.error || res.statusText}`;
  } catch (err) { actionNote = "cancel failed: " + err.message; }
  await redraw();
}
const LIVE = ["RUNNING", "PENDING", "SCHEDULED"];

async function flowPage() {
  const draw = async () => {
    const [{body: f}, {body: metrics}, {body: bars}, {body: logs}, {body: arts}] = await Promise.all([
      api(`flow-runs/${PAGE_ID}`), api(`metrics?flow_run=${PAGE_ID}`), api(`timeline?flow_run=${PAGE_ID}`),
      api(`flow-runs/${PAGE_ID}/logs?limit=300`), api(`flow-runs/${PAGE_ID}/artifacts`)]);
    document.title = `${f.name} · daskflow`;
    const params = Object.entries(f.parameters || {});
    const slowest = f.slowest.length ? table(["name", "state", "duration#", "worker", "id"], f.slowest.map(r => h("tr", {},
      td(runLink(r)), td(stateBadge(r.state, r.state_type)), td(seconds(r.duration), "num"), td(r.worker || "-", "mono"),
      td(short(r.id), "mono muted")))) : empty("no finished task runs");
    render(
      h("h1", {}, f.name || "flow run", stateBadge(f.state, f.state_type), h("span", {class: "muted mono"}, f.id),
        LIVE.includes(f.state_type) ? h("button", {class: "action", id: "cancel", onclick: ev => cancelFlowRun(ev, draw)},
                                        "Cancel") : null),
      actionNote ? h("p", {class: "note", id: "action-note"}, actionNote) : null,
      h("dl", {class: "fields"},
        h("dt", {}, "start"), h("dd", {}, when(f.start)), h("dt", {}, "duration"), h("dd", {}, span(f.start, f.end)),
        h("dt", {}, "task runs"), h("dd", {}, h("a", {href: `${BASE}/runs?flow_run=${f.id}`}, String(f.task_runs))),
        h("dt", {}, "per state"), h("dd", {}, counts(f.counts, f.id)),
        f.message ? [h("dt", {}, "message"), h("dd", {class: "mono"}, f.message)] : null,
        params.length ? [h("dt", {}, "parameters"), h("dd", {class: "mono"}, params.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join("  "))] : null,
        (f.retries || []).length ? [h("dt", {}, "retries"), h("dd", {}, f.retries.map(r =>
          `attempt ${r.attempt} (was ${r.previous_state}): ${r.state || "running"}, ${r.reused || 0} runs reused`).join("; "))] : null,
        RETRYABLE.has(f.state_type) ? [h("dt", {}, "retry"), h("dd", {},
          h("code", {class: "mono"}, `daskflow flow-runs retry ${f.id}`),
          h("span", {class: "muted"}, " reruns what did not complete; completed task runs are reused"))] : null),
      (f.failures || []).length ? [h("h2", {}, "Failures (root causes first)"),
        table(["name", "state", "message", "end", "id"], f.failures.map(r => h("tr", {}, td(runLink(r)),
          td(stateBadge(r.state, r.state_type)), td(h("span", {class: "mono"}, r.message || "")), td(when(r.end), "mono"),
          td(short(r.id), "mono muted"))))] : null,
      h("h2", {}, "Task metrics"), metricsTable(metrics),
      h("h2", {}, "Timeline of chunks across workers"), timelineChart(bars),
      h("h2", {}, "Slowest task runs"), slowest,
      h("h2", {}, "Artifacts"), artifactList(arts, true),
      h("h2", {}, "Logs"), logTable(logs, true));
    return LIVE.includes(f.state_type);
  };
  await poll(draw);
}

const STATES = ["", "Completed", "Cached", "Failed", "Crashed", "Cancelled", "Running", "Pending", "Retrying",
  "AwaitingRetry", "NotReady", "TimedOut", "COMPLETED", "FAILED"];

async function runsPage() {
  document.title = "Task runs · daskflow";
  const q = new URLSearchParams(location.search);
  const field = (name, label, attrs) => h("label", {}, label, h("input", Object.assign({name, value: q.get(name) || ""}, attrs || {})));
  const stateSel = h("select", {name: "state"}, STATES.map(s => h("option", {value: s, selected: q.get("state") === s ? "" : null}, s || "any")));
  const form = h("form", {class: "filters", method: "get", action: `${BASE}/runs`},
    h("label", {}, "state", stateSel), field("task", "task"), field("flow_run", "flow run"),
    field("id", "id prefix", {class: "mono", size: 14}), h("button", {type: "submit"}, "Filter"),
    h("a", {href: `${BASE}/runs`}, "clear"));
  const pager = h("div", {class: "pager"});
  const holder = h("div", {});
  render(h("h1", {}, "Task runs"), form, pager, holder);
  const cursors = [null];  // the cursor of every page seen so far: Previous goes back one
  let page = 0;
  const show = async () => {
    const params = new URLSearchParams();
    for (const k of ["state", "task", "flow_run", "id"]) if (q.get(k)) params.set(k, q.get(k));
    params.set("limit", q.get("limit") || "50");
    if (cursors[page]) params.set("cursor", cursors[page]);
    const t = performance.now();
    const {body, next} = await api("runs?" + params);
    cursors[page + 1] = next;
    holder.replaceChildren(body.length ? table(["name", "state", "start", "duration#", "runs#", "worker", "flow run", "id"],
      body.map(r => h("tr", {}, td(runLink(r)), td(stateBadge(r.state, r.state_type)), td(when(r.start), "mono"),
        td(span(r.start, r.end), "num"), td(r.run_count, "num"), td(r.worker || "-", "mono"),
        td(flowLink(r.flow_run_id)), td(short(r.id), "mono muted")))) : empty(next ? "nothing here yet: go on to the next page" : "no task runs match"));
    pager.replaceChildren(
      h("button", {disabled: page === 0 ? "" : null, onclick: () => { page -= 1; show().catch(fail); }}, "← Newer"),
      h("span", {class: "muted"}, `page ${page + 1} · ${body.length} run(s) · ${Math.round(performance.now() - t)} ms`),
      h("button", {disabled: next ? null : "", onclick: () => { page += 1; show().catch(fail); }}, "Older →"));
    setStatus("updated " + when(Date.now() / 1000));
  };
  await show();
}

async function runPage() {
  await poll(async () => {
    const [{body: r}, {body: logs}, {body: arts}] = await Promise.all([api(`runs/${PAGE_ID}`), api(`runs/${PAGE_ID}/logs`),
      api(`runs/${PAGE_ID}/artifacts`)]);
    document.title = `${r.name} · daskflow`;
    let prev = null;
    const history = table(["state", "time", "since previous#", "message"], r.history.map(e => {
      const row = h("tr", {}, td(stateBadge(e.name, e.type)), td(when(e.timestamp), "mono"),
        td(prev && e.timestamp ? seconds(e.timestamp - prev) : "-", "num"), td(h("span", {class: "mono"}, e.message || "")));
      prev = e.timestamp || prev;
      return row;
    }));
    const fields = [["id", h("span", {class: "mono"}, r.id)], ["task", r.task_key || r.task_name],
      ["flow run", flowLink(r.flow_run_id, r.flow_run_id)], ["worker", r.worker || "-"], ["run count", String(r.run_count)],
      ["start", when(r.start)], ["end", when(r.end)], ["duration", span(r.start, r.end)],
      ["resources", resourcesText(r.resources)],
      ["cache key", r.cache_key ? h("span", {class: "mono"}, r.cache_key) : "-"]];
    render(
      h("h1", {}, r.name, stateBadge(r.state, r.state_type)),
      h("dl", {class: "fields"}, fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      r.error ? [h("h2", {}, "Error"), h("pre", {class: "error"}, r.error)] : null,
      r.inputs ? [h("h2", {}, "Inputs"), h("dl", {class: "fields inputs"}, Object.entries(r.inputs).map(([k, v]) =>
        [h("dt", {}, k), h("dd", {}, h("span", {class: "mono"}, v))]))] : null,
      r.traceback ? [h("h2", {}, "Traceback"), h("pre", {}, r.traceback)] : null,
      h("h2", {}, "State history"), history,
      h("h2", {}, "Artifacts"), artifactList(arts, false),
      h("h2", {}, "Logs"), logTable(logs, false));
    return !["COMPLETED", "FAILED", "CRASHED", "CANCELLED"].includes(r.state_type);
  });
}

for (const a of document.querySelectorAll("header nav a")) {
  if (a.dataset.nav === (PAGE === "flow" ? "flows" : PAGE === "run" ? "runs" : PAGE)) a.classList.add("active");
}
({flows: flowsPage, flow: flowPage, runs: runsPage, run: runPage})[PAGE]().catch(fail);
