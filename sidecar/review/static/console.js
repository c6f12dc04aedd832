// The reviewer console. Plain script, no build step. The token lives in sessionStorage and is
// sent as "Authorization: Bearer"; no cookies, so cross-site requests carry no credentials.
// Every untrusted value is written with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "sidecar.review.token";
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = { me: null, after: 0, item: null };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401) { signOut("Your token was not accepted."); }
  if (!res.ok) {
    const detail = data && data.detail;
    const text = Array.isArray(detail)
      ? detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ")
      : (detail || res.statusText);
    const err = new Error(text);
    err.status = res.status;
    throw err;
  }
  return data;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString() : "—"; }

function show(section) {
  for (const id of ["login", "queue", "detail"]) $(id).hidden = id !== section;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  $("who").hidden = true;
  $("login-error").textContent = message || "";
  show("login");
}

async function signIn(tok) {
  sessionStorage.setItem(TOKEN_KEY, tok);
  try {
    state.me = await api("GET", "/review/me");
  } catch (e) {
    if (e.status !== 401) signOut(e.message);
    return false;
  }
  $("who-name").textContent = state.me.name;
  $("who-role").textContent = state.me.role;
  $("who").hidden = false;
  return true;
}

// ---- queue --------------------------------------------------------------------------------

function queueQuery(after) {
  const q = new URLSearchParams({ limit: "50" });
  const status = $("f-status").value, reason = $("f-reason").value.trim();
  const model = $("f-model").value.trim();
  if (status) q.set("status", status);
  if (reason) q.set("reason", reason);
  if (model) q.set("model", model);
  if ($("f-mine").checked) q.set("mine", "true");
  if (after) q.set("after", String(after));
  return "/review/items?" + q.toString();
}

async function loadQueue(append) {
  const body = $("queue-table").tBodies[0];
  let page;
  try {
    page = await api("GET", queueQuery(append ? state.after : 0));
  } catch (e) {
    $("counts").textContent = e.message;
    return;
  }
  if (!append) body.replaceChildren();
  for (const it of page.items) {
    const tr = document.createElement("tr");
    tr.dataset.item = it.item_id;
    tr.tabIndex = 0;
    tr.append(
      el("td", it.item_id), el("td", it.reason), el("td", it.model_name),
      el("td", fmtValue(it.prediction)),
      el("td", it.confidence === null ? "—" : it.confidence.toFixed(3), "num"),
      el("td", it.status), el("td", it.claimed_by || ""), el("td", fmtTime(it.created)),
    );
    tr.addEventListener("click", () => openItem(it.item_id));
    tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openItem(it.item_id); });
    body.append(tr);
  }
  state.after = page.next_after || 0;
  $("more-btn").hidden = !page.next_after;
  $("queue-empty").hidden = body.rows.length > 0;
  const c = page.counts;
  $("counts").textContent =
    `${c.pending || 0} pending · ${c.claimed || 0} claimed · ${c.decided || 0} decided`;
}

function openQueue() {
  if (location.hash) history.pushState(null, "", location.pathname);
  show("queue");
  loadQueue(false);
}

// ---- one decision -------------------------------------------------------------------------

function itemPath(id) {
  const [rid, row] = id.split("/");
  return "/review/items/" + encodeURIComponent(rid) + "/" + encodeURIComponent(row || "0");
}

async function openItem(id) {
  if (location.hash !== "#" + id) history.pushState(null, "", "#" + id);
  $("message").textContent = "";
  $("message").className = "";
  $("reason").value = "";
  $("outcome").value = "";
  show("detail");
  await refreshItem(id);
}

async function refreshItem(id) {
  let item;
  try {
    item = await api("GET", itemPath(id));
  } catch (e) {
    $("detail-title").textContent = id;
    setMessage(e.message, true);
    return;
  }
  state.item = item;
  renderItem(item);
  loadHistory(id);
}

function kv(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    const dd = el("dd");
    if (v instanceof Node) dd.append(v); else dd.textContent = v;
    dl.append(el("dt", k), dd);
  }
}

function confidenceNode(c) {
  const span = el("span", c === null ? "—" : c.toFixed(3));
  if (c !== null) {
    const bar = el("span", null, "conf");
    const fill = el("span");
    fill.style.width = Math.round(Math.max(0, Math.min(1, c)) * 100) + "%";
    bar.append(fill);
    span.append(bar);
  }
  return span;
}

function renderItem(item) {
  const d = item.decision;
  $("detail-title").textContent = item.item_id;
  $("detail-status").textContent = item.status;
  $("detail-status").className = "badge " + item.status;
  kv($("summary"), [
    ["Prediction", fmtValue(d.prediction)],
    ["Confidence", confidenceNode(d.confidence)],
    ["Probabilities", d.probabilities ? d.probabilities.map((p) => p.toFixed(3)).join(", ") : "—"],
    ["Model", d.model_name + (d.model_version ? " v" + d.model_version : "")],
    ["Routed because", item.reason],
    ["Mode", item.mode],
    ["Made at", fmtTime(d.time)],
  ]);
  const fbody = $("features").tBodies[0];
  fbody.replaceChildren();
  const names = d.feature_names || (d.features || []).map((_, i) => "f" + i);
  (d.features || []).forEach((v, i) => {
    const tr = document.createElement("tr");
    tr.append(el("td", names[i]), el("td", fmtValue(v), "num"));
    fbody.append(tr);
  });
  const groups = d.group_attributes;
  $("groups-box").hidden = !groups || Object.keys(groups).length === 0;
  if (groups) kv($("groups"), Object.entries(groups));
  renderChart(item.explanation, item.explanation_error);
  renderContest(item.contest);
  $("waterfall-box").open = false;
  $("waterfall").removeAttribute("src");
  renderActions(item);
}

// What the person said when they contested, and the model's answer for their corrections.
function renderContest(c) {
  $("contest-box").hidden = !c;
  if (!c) return;
  const pairs = [["Statement", c.statement], ["Filed", fmtTime(c.filed_at) + " by " + c.filed_by]];
  if (c.corrected_values) pairs.push(["Corrected values", fmtValue(c.corrected_values)]);
  if (c.rescore) {
    pairs.push(["Model's answer for them", c.rescore.error
      ? "none: " + c.rescore.error
      : fmtValue(c.rescore.prediction) + " (decision " + c.rescore.decision_id + ")"]);
  }
  if (c.reasons && c.reasons.reasons) {
    pairs.push(["Reasons given", c.reasons.reasons.map((r) => r.text).join("; ") || "—"]);
  }
  kv($("contest"), pairs);
}

// The server draws the waterfall (GET /decisions/{id}/plot, the lookup's numbers) when it is
// opened; the token travels in the header, so it is fetched here and shown as a data: URL
// (the CSP allows data: images).
async function loadWaterfall() {
  const img = $("waterfall");
  if (!$("waterfall-box").open || !state.item || img.getAttribute("src")) return;
  const [rid, row] = state.item.item_id.split("/");
  const res = await fetch("/decisions/" + encodeURIComponent(rid) + "/" + encodeURIComponent(row || "0") + "/plot",
    { headers: { Authorization: "Bearer " + token() }, credentials: "omit", cache: "no-store" });
  if (!res.ok) { img.alt = "No waterfall: " + res.status + " " + res.statusText; return; }
  const bytes = new Uint8Array(await res.arrayBuffer());
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  img.src = "data:image/svg+xml;base64," + btoa(bin);
}

function renderActions(item) {
  const mine = item.status === "claimed" && state.me && item.claimed_by === state.me.name;
  const canAct = state.me && state.me.role !== "auditor";
  $("claim-btn").disabled = !canAct || item.status === "decided" || mine
    || (item.status === "claimed" && !mine);
  $("release-btn").disabled = !canAct || item.status !== "claimed"
    || (!mine && state.me.role !== "admin");
  $("approve-btn").disabled = !mine;
  $("override-btn").disabled = !mine;
  $("decide-form").hidden = item.status === "decided";
  let line = "Pending: claim it to decide.";
  if (item.status === "claimed") {
    line = `Claimed by ${item.claimed_by} until ${fmtTime(item.lease_expires)}.`;
  } else if (item.status === "decided") {
    line = `Decided (${item.action}) by ${item.decided_by} at ${fmtTime(item.decided_at)}.`;
  }
  $("claim-line").textContent = line;
  const box = $("outcome-box");
  box.hidden = item.status !== "decided";
  if (item.status === "decided") {
    kv(box, [["Outcome", fmtValue(item.outcome)], ["Reason", item.decided_reason || ""]]);
  }
}

// A horizontal bar chart of the top contributions, drawn as SVG: positive pushes the score up.
function renderChart(expl, error) {
  const box = $("chart");
  box.replaceChildren();
  const top = expl && Array.isArray(expl.top) ? expl.top.slice() : [];
  if (!top.length) {
    $("chart-note").textContent = error || "No explanation available.";
    return;
  }
  top.sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
  const base = expl.base_values && expl.base_values.length ? expl.base_values[0] : null;
  $("chart-note").textContent =
    `${expl.explainer || "explainer"} · ${expl.output_space || "margin"} space` +
    (base !== null ? ` · base value ${fmtValue(base)}` : "") +
    " · red raises the score, blue lowers it";
  if (expl.fidelity === "mismatch") {
    // The explained model did not give the server's answer: never present it as the reason.
    const f = expl.fidelity_detail || {};
    const vals = (v) => (Array.isArray(v) ? v.map(fmtValue).join(", ") : "?");
    $("chart-note").textContent =
      `Fidelity mismatch: the explained model answered ${vals(f.explained)} where the model ` +
      `server answered ${vals(f.served)}. This is not the reason for the decision. ` +
      $("chart-note").textContent;
  }
  const W = 640, rowH = 26, labelW = 210, valueW = 70, pad = 8;
  const H = top.length * rowH + 2 * pad;
  const plotW = W - labelW - valueW;
  const zero = labelW + plotW / 2;
  const scale = (plotW / 2 - 4) / Math.max(...top.map((t) => Math.abs(t.contribution)), 1e-12);
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Top feature contributions");
  const mk = (tag, attrs, text) => {
    const n = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  top.forEach((t, i) => {
    const y = pad + i * rowH;
    const w = Math.abs(t.contribution) * scale;
    const pos = t.contribution >= 0;
    mk("text", { x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end" },
      `${t.feature} = ${fmtValue(t.value)}`);
    const bar = mk("rect", {
      x: pos ? zero : zero - w, y: y + 4, width: Math.max(w, 1), height: rowH - 8,
      class: "bar " + (pos ? "pos" : "neg"),
    });
    bar.dataset.feature = t.feature;
    mk("text", { x: W - 4, y: y + rowH / 2 + 4, "text-anchor": "end" },
      (pos ? "+" : "") + t.contribution.toFixed(3));
  });
  mk("line", { x1: zero, x2: zero, y1: 2, y2: H - 2, class: "axis" });
  box.append(svg);
}

async function loadHistory(id) {
  const list = $("history");
  list.replaceChildren();
  try {
    const page = await api("GET", itemPath(id) + "/history");
    for (const r of page.records) {
      const extra = r.data && r.data.reason && r.action !== "requested" ? ` — “${r.data.reason}”` : "";
      list.append(el("li", `${fmtTime(r.time)}: ${r.action} by ${r.actor}${extra}`));
    }
  } catch (e) {
    list.append(el("li", e.message));
  }
}

function setMessage(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "ok";
}

async function act(fn, okText) {
  const id = state.item.item_id;
  try {
    await fn(id);
    setMessage(okText, false);
  } catch (e) {
    setMessage(e.message, true);
  }
  await refreshItem(id);
}

function parseOutcome(text) {
  try { return JSON.parse(text); } catch (e) { return text; }
}

function decide(action) {
  const reason = $("reason").value.trim();
  if (!reason) { setMessage("Give a reason.", true); return; }
  const body = { action, reason };
  if (action === "override") {
    const raw = $("outcome").value.trim();
    if (!raw) { setMessage("An override needs an outcome.", true); return; }
    body.outcome = parseOutcome(raw);
  }
  act((id) => api("POST", itemPath(id) + "/decision", body),
    action === "approve" ? "Approved." : "Overridden.");
}

// ---- wiring -------------------------------------------------------------------------------

function route() {
  const id = decodeURIComponent(location.hash.slice(1));
  if (id) { show("detail"); refreshItem(id); } else { show("queue"); loadQueue(false); }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const tok = $("token").value.trim();
    $("token").value = "";
    if (tok && (await signIn(tok))) route();
  });
  $("logout-btn").addEventListener("click", () => signOut(""));
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadQueue(false); });
  $("f-status").addEventListener("change", () => loadQueue(false));
  $("more-btn").addEventListener("click", () => loadQueue(true));
  $("back-btn").addEventListener("click", openQueue);
  $("waterfall-box").addEventListener("toggle", loadWaterfall);
  $("claim-btn").addEventListener("click", () =>
    act((id) => api("POST", itemPath(id) + "/claim"), "Claimed: it is yours until the lease ends."));
  $("release-btn").addEventListener("click", () =>
    act((id) => api("POST", itemPath(id) + "/release"), "Released."));
  $("approve-btn").addEventListener("click", () => decide("approve"));
  $("override-btn").addEventListener("click", () => decide("override"));
  $("decide-form").addEventListener("submit", (ev) => ev.preventDefault());
  window.addEventListener("popstate", () => { if (state.me) route(); });
  if (token() && (await signIn(token()))) route(); else show("login");
});
