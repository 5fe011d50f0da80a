// ragway's console: a page over ragway's public API and nothing else. Every action is a call a
// script could make (the same routes, the same key); the key stays in this tab's sessionStorage.
"use strict";

const session = {
  key: sessionStorage.getItem("ragway.key") || "",
  role: sessionStorage.getItem("ragway.role") || "",
  label: sessionStorage.getItem("ragway.label") || "",
  timers: [],
  /** Counts the pages shown: a timer started for an earlier page stops itself. */
  view: 0,
  notice: "",
};

// ---- DOM -------------------------------------------------------------------------------------

/** An element: `attrs` sets properties for `on*` and `text`, attributes otherwise. */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);
let uid = 0;
const nextId = (prefix) => `${prefix}-${++uid}`;

/** A labelled control: `<label>text <input …></label>`. */
function field(text, control) {
  return h("label", {}, text, control);
}

function say(message, kind = "info") {
  const status = $("#status");
  status.className = "status" + (kind === "error" ? " error" : "");
  status.textContent = message || "";
}

function fail(error) {
  if (!session.role) return; // signed out meanwhile: the sign-in page says why
  say(error instanceof ApiFailure ? error.describe() : String(error.message || error), "error");
}

const number = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const bytes = (n) => {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
};
const ms = (s) => (s === null || s === undefined || Number.isNaN(s) ? "—" : `${(s * 1000).toFixed(1)} ms`);

// ---- API -------------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
  describe() {
    const retry = this.retryAfter ? ` (retry after ${this.retryAfter} s)` : "";
    return `${this.status} ${this.code || ""}: ${this.message}${retry}`;
  }
}

function authHeaders(key = session.key) {
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** Calls the API as the signed-in key; a key no longer accepted signs the console out. */
async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) throw failure(response.status, data, response.headers.get("retry-after"));
  return data;
}

function failure(status, data, retryAfter) {
  const detail = (data && data.error) || {};
  const error = new ApiFailure(status, detail.code, detail.message || `HTTP ${status}`, retryAfter);
  if (session.role && (status === 401 || (session.role === "operator" && status === 403))) {
    signOut("This key is no longer accepted (revoked, or its tenant deleted): sign in again.");
  }
  return error;
}

// ---- sign in ---------------------------------------------------------------------------------

/** Which kind of key `key` is: the admin key opens /admin, a tenant's key /v1. */
async function identify(key) {
  const admin = await fetch("/admin/faults", { headers: authHeaders(key) });
  if (admin.ok) return { role: "operator", label: "operator" };
  const own = await fetch("/v1/usage?days=1", { headers: authHeaders(key) });
  if (own.ok) {
    const usage = await own.json();
    return { role: "tenant", label: usage.tenant ? `tenant ${usage.tenant}` : "open mode (no keys)" };
  }
  return null;
}

function keep(key, who) {
  Object.assign(session, { key, role: who.role, label: who.label });
  sessionStorage.setItem("ragway.key", key);
  sessionStorage.setItem("ragway.role", who.role);
  sessionStorage.setItem("ragway.label", who.label);
}

function signOut(reason) {
  for (const key of ["ragway.key", "ragway.role", "ragway.label"]) sessionStorage.removeItem(key);
  Object.assign(session, { key: "", role: "", label: "", notice: reason });
  stopTimers();
  go("#/signin");
}

/** Shows `hash`'s page (a hash change renders it; the same hash again is rendered here). */
function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function signInView(main) {
  const input = h("input", { type: "password", id: "key", name: "key", autocomplete: "off",
    "aria-describedby": "key-help", autofocus: true });
  const form = h("form", { class: "card signin", onsubmit: async (event) => {
    event.preventDefault();
    say("Signing in…");
    try {
      const who = await identify(input.value.trim());
      if (!who) { say("This key is not accepted: it is neither a tenant's key nor the admin key.", "error"); return; }
      keep(input.value.trim(), who);
      say("");
      go(who.role === "operator" ? "#/tenants" : "#/collections");
    } catch (error) { fail(error); }
  } },
  h("h1", { text: "Sign in" }),
  field("API key", input),
  h("p", { id: "key-help", class: "muted" },
    "A tenant's key (rgw_…) opens its collections; the admin key opens the operator's view. ",
    "With keys off (open mode), leave it empty."),
  h("button", { type: "submit", text: "Sign in" }));
  main.append(form);
  input.focus();
}

// ---- routing ---------------------------------------------------------------------------------

const tenantNav = [["#/collections", "Collections"], ["#/playground", "Playground"], ["#/usage", "Usage"]];
const operatorNav = [["#/tenants", "Tenants"], ["#/health", "Health"], ["#/faults", "Faults"],
  ["#/maintenance", "Cache & snapshots"]];

const views = {
  tenant: {
    collections: collectionsView, collection: collectionView, playground: playgroundView, usage: usageView,
  },
  operator: {
    tenants: tenantsView, tenant: tenantView, health: healthView, faults: faultsView, maintenance: maintenanceView,
  },
};

function stopTimers() {
  for (const timer of session.timers) clearInterval(timer);
  session.timers = [];
}

/** Runs `tick` now and every `ms` while this page is shown. */
function every(ms, tick) {
  const page = session.view;
  const timer = setInterval(() => (session.view === page ? tick() : clearInterval(timer)), ms);
  session.timers.push(timer);
  tick();
}

function render() {
  stopTimers();
  session.view += 1;
  const main = $("#main");
  main.replaceChildren();
  const [, page = "", ...rest] = location.hash.split("/");
  const param = rest.map(decodeURIComponent).join("/");
  const nav = $("#nav");
  const who = $("#who");
  nav.replaceChildren();
  who.replaceChildren();
  if (!session.role) {
    document.title = "Sign in — ragway console";
    signInView(main);
    if (session.notice) say(session.notice, "error");
    session.notice = "";
    return;
  }
  const links = session.role === "operator" ? operatorNav : tenantNav;
  for (const [href, text] of links) {
    const current = location.hash.startsWith(href) || (page === "collection" && href === "#/collections")
      || (page === "tenant" && href === "#/tenants");
    nav.append(h("a", { href, text, "aria-current": current ? "page" : null }));
  }
  who.append(h("span", { text: session.label }),
    h("button", { type: "button", class: "secondary", text: "Sign out", onclick: () => signOut("") }));
  const view = views[session.role][page];
  if (!view) { location.hash = links[0][0]; return; }
  view(main, param);
  const title = $("h1", main);
  document.title = `${title ? title.textContent : page} — ragway console`;
}

window.addEventListener("hashchange", () => {
  say("");
  render();
  // Keyboard and screen-reader users land on the new page (unless it focused a field itself).
  if (!$("#main").contains(document.activeElement)) $("#main").focus();
});
window.addEventListener("DOMContentLoaded", render);

// ---- shared pieces ---------------------------------------------------------------------------

function table(headers, rows, caption) {
  return h("div", { class: "scroll" }, h("table", {},
    caption ? h("caption", { class: "muted", text: caption }) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: x.endsWith("#") ? "num" : null,
      text: x.replace(/#$/, "") })))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted", text: "None." })))));
}

/** One bar of a chart: its name, a track filled to `value / max` with `limit` marked, the figures. */
function bar(name, value, max, limit) {
  const scale = Math.max(max || 0, limit || 0, value || 0, 1);
  const fill = h("span", { class: "fill" + (limit && value > limit ? " over" : "") });
  fill.style.width = `${Math.min(100, (100 * (value || 0)) / scale)}%`;
  const track = h("span", { class: "track", role: "img",
    "aria-label": `${name}: ${number(value)}${limit ? ` of ${number(limit)}` : ""}` }, fill);
  if (limit) {
    const mark = h("span", { class: "limit" });
    mark.style.left = `${Math.min(100, (100 * limit) / scale)}%`;
    track.append(mark);
  }
  return h("div", { class: "bar" }, h("span", { text: name }), track,
    h("span", { class: "num", text: limit ? `${number(value)} / ${number(limit)}` : number(value) }));
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind}`, text });
}

function modeKind(mode) {
  return mode === "normal" ? "ok" : mode === "error" ? "bad" : "warn";
}

const fusionMethods = ["adaptive", "rrf", "convex", "dbsf"];

// ---- tenant: collections ---------------------------------------------------------------------

function collectionsView(main) {
  const list = h("div", {});
  const name = h("input", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9_\\-]{0,63}",
    "aria-describedby": "name-help" });
  const fusion = h("select", { name: "fusion" }, h("option", { value: "", text: "server default" }),
    fusionMethods.map((m) => h("option", { value: m, text: m })));
  const load = async () => {
    try {
      const { collections } = await api("GET", "/v1/collections");
      list.replaceChildren(table(["Collection", "Documents#", "Chunks#", "Stored#", "Fusion"],
        collections.map((c) => h("tr", {},
          h("td", {}, h("a", { href: `#/collection/${encodeURIComponent(c.name)}`, text: c.name })),
          h("td", { class: "num", text: number(c.documents) }), h("td", { class: "num", text: number(c.chunks) }),
          h("td", { class: "num", text: bytes(c.bytes) }),
          h("td", { text: c.fusion ? c.fusion.method : "server default" })))));
    } catch (error) { fail(error); }
  };
  main.append(h("h1", { text: "Collections" }),
    h("form", { class: "card row", onsubmit: async (event) => {
      event.preventDefault();
      const body = { name: name.value.trim() };
      if (fusion.value) body.fusion = { method: fusion.value };
      try {
        await api("POST", "/v1/collections", body);
        say(`Created ${body.name}.`);
        name.value = "";
        load();
      } catch (error) { fail(error); }
    } },
    h("h2", { text: "New collection", class: "full" }),
    field("Name", name), field("Fusion", fusion),
    h("button", { type: "submit", text: "Create" }),
    h("p", { id: "name-help", class: "muted full",
      text: "Lowercase letters, digits, - and _; up to 64 characters." })),
    h("section", { class: "card", "aria-labelledby": "list-h" }, h("h2", { id: "list-h", text: "Your collections" }), list));
  load();
}

function collectionView(main, name) {
  const path = `/v1/collections/${encodeURIComponent(name)}`;
  const summary = h("p", { class: "muted", id: "summary" });
  main.append(h("h1", { text: name }), summary);
  const refreshSummary = async () => {
    try {
      const c = await api("GET", path);
      summary.textContent = `${number(c.documents)} documents · ${number(c.chunks)} chunks · ${bytes(c.bytes)}`
        + ` · embedder ${c.embedder || "—"} · epoch ${c.epoch}`;
      return c;
    } catch (error) { fail(error); return null; }
  };
  const grid = h("div", { class: "grid" });
  main.append(grid);
  refreshSummary().then((info) => {
    if (!info) return;
    const documents = documentsCard(path, refreshSummary);
    const changed = () => { refreshSummary(); documents.reload(); };
    grid.append(uploadCard(path, changed), settingsCard(path, name, info));
    main.append(documents.section, jobsCard(path));
  });
}

function settingsCard(path, name, info) {
  const method = h("select", { name: "method" }, h("option", { value: "", text: "server default" }),
    fusionMethods.map((m) => h("option", { value: m, text: m, selected: info.fusion && info.fusion.method === m })));
  const confirmName = h("input", { name: "confirm", autocomplete: "off" });
  const dropForm = h("form", { class: "row", hidden: true, onsubmit: async (event) => {
    event.preventDefault();
    if (confirmName.value !== name) { say(`Type ${name} to drop it.`, "error"); return; }
    try {
      await api("DELETE", path);
      say(`Dropped ${name}.`);
      location.hash = "#/collections";
    } catch (error) { fail(error); }
  } }, field(`Type ${name} to confirm`, confirmName), h("button", { type: "submit", class: "danger", text: "Drop for good" }));
  return h("section", { class: "card", "aria-labelledby": "settings-h" },
    h("h2", { id: "settings-h", text: "Settings" }),
    h("form", { class: "row", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("PATCH", path, { fusion: method.value ? { method: method.value } : null });
        say("Fusion saved (cached answers of the old setting are no longer served).");
      } catch (error) { fail(error); }
    } }, field("Fusion", method), h("button", { type: "submit", text: "Save" })),
    h("p", { class: "muted", text: `Storage: ${info.storage ? `${info.storage.quantization}, vectors on disk: ${info.storage.vectors_on_disk}` : "the store's own"}` }),
    h("button", { type: "button", class: "danger", text: "Drop collection…", "aria-expanded": "false",
      onclick: (event) => { dropForm.hidden = false; event.target.setAttribute("aria-expanded", "true"); confirmName.focus(); } }),
    dropForm);
}

function uploadCard(path, changed) {
  const files = h("input", { type: "file", name: "files", multiple: true,
    accept: ".pdf,.docx,.html,.htm,.md,.markdown,.txt,text/*" });
  const uploads = h("div", { id: "uploads", "aria-live": "polite" });
  return h("section", { class: "card", "aria-labelledby": "upload-h" },
    h("h2", { id: "upload-h", text: "Upload files" }),
    h("form", { class: "row", onsubmit: (event) => {
      event.preventDefault();
      if (!files.files.length) { say("Choose one or more files first.", "error"); return; }
      const chosen = [...files.files];
      files.value = "";
      uploads.prepend(upload(path, chosen, changed));
    } }, field("Files (PDF, DOCX, HTML, Markdown, text)", files), h("button", { type: "submit", text: "Upload" })),
    uploads);
}

/** One upload: its bytes sent (XHR reports them), then its job followed to the end. */
function upload(path, chosen, changed) {
  const names = chosen.map((f) => f.name).join(", ");
  const progress = h("progress", { max: 100, value: 0, "aria-label": `Progress of ${names}` });
  const state = h("span", { class: "state", text: "uploading" });
  const detail = h("span", { class: "muted" });
  const box = h("div", { class: "job upload" }, h("strong", { text: names }), progress, h("div", {}, state, " ", detail));
  const form = new FormData();
  for (const file of chosen) form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${path}/files`);
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = (50 * e.loaded) / e.total; };
  xhr.onerror = () => { state.textContent = "failed"; detail.textContent = "the connection failed"; };
  xhr.onload = () => {
    let data = null;
    try { data = JSON.parse(xhr.responseText); } catch { data = null; }
    if (xhr.status !== 202) {
      const error = failure(xhr.status, data, xhr.getResponseHeader("retry-after"));
      state.textContent = "refused";
      detail.textContent = error.describe();
      progress.value = 0;
      return;
    }
    state.textContent = "queued";
    const poll = setInterval(async () => {
      try {
        const job = await api("GET", data.status_url);
        const total = job.chunks_total || job.documents_total || 1;
        const done = job.chunks_total ? job.chunks_done : job.documents_done;
        progress.value = job.state === "done" ? 100 : 50 + (50 * done) / total;
        state.textContent = job.state;
        detail.textContent = `${number(job.documents_done)}/${number(job.documents_total)} documents, `
          + `${number(job.chunks_done)}/${number(job.chunks_total)} chunks`
          + (job.errors.length ? ` — ${job.errors.join("; ")}` : "");
        if (!["queued", "running"].includes(job.state)) {
          clearInterval(poll);
          changed();
        }
      } catch (error) { clearInterval(poll); fail(error); }
    }, 500);
  };
  xhr.send(form);
  return box;
}

function documentsCard(path, refreshSummary) {
  const prefix = h("input", { type: "search", name: "prefix", autocomplete: "off" });
  const rows = h("div", {});
  const more = h("button", { type: "button", class: "secondary", text: "Next page", hidden: true });
  let after = null;
  const load = async (reset) => {
    if (reset) after = null;
    const query = new URLSearchParams({ limit: "50" });
    if (prefix.value) query.set("prefix", prefix.value);
    if (after) query.set("after", after);
    try {
      const page = await api("GET", `${path}/documents?${query}`);
      after = page.next_after || null;
      more.hidden = !after;
      rows.replaceChildren(table(["Document", "Chunks#", "Text#", ""], page.documents.map((d) => h("tr", {},
        h("td", { class: "mono", text: d.id }), h("td", { class: "num", text: number(d.chunks) }),
        h("td", { class: "num", text: bytes(d.bytes) }),
        h("td", {}, h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${d.id}`,
          onclick: async () => {
            try {
              await api("DELETE", `${path}/documents/${encodeURIComponent(d.id)}`);
              say(`Deleted ${d.id}.`);
              load(true);
              refreshSummary();
            } catch (error) { fail(error); }
          } }))))));
    } catch (error) { fail(error); }
  };
  more.addEventListener("click", () => load(false));
  load(true);
  const section = h("section", { class: "card", "aria-labelledby": "docs-h" },
    h("h2", { id: "docs-h", text: "Documents" }),
    h("form", { class: "row", role: "search", onsubmit: (event) => { event.preventDefault(); load(true); } },
      field("Find by id (prefix)", prefix), h("button", { type: "submit", text: "Find" })),
    rows, more);
  return { section, reload: () => load(true) };
}

function jobsCard(path) {
  const rows = h("div", {});
  const section = h("section", { class: "card", "aria-labelledby": "jobs-h" }, h("h2", { id: "jobs-h", text: "Jobs" }), rows);
  every(2000, async () => {
    try {
      const { jobs } = await api("GET", `${path}/jobs`);
      rows.replaceChildren(table(["Job", "State", "Documents#", "Chunks#", "Errors", "Created"],
        jobs.slice().reverse().map((j) => h("tr", {},
          h("td", { class: "mono", text: j.id.slice(0, 8) }), h("td", { text: j.state }),
          h("td", { class: "num", text: `${number(j.documents_done)}/${number(j.documents_total)}` }),
          h("td", { class: "num", text: `${number(j.chunks_done)}/${number(j.chunks_total)}` }),
          h("td", { text: j.errors.join("; ") || "—" }), h("td", { text: j.created_at })))));
    } catch (error) { fail(error); }
  });
  return section;
}

// ---- tenant: playground ----------------------------------------------------------------------

function playgroundView(main) {
  const collection = h("select", { name: "collection", required: true });
  const question = h("textarea", { name: "question", rows: 3, required: true });
  const ask = h("button", { type: "submit", text: "Ask" });
  const badges = h("div", { class: "badges", id: "badges", "aria-live": "polite" }, badge("no answer yet", "ok"));
  const answer = h("div", { class: "answer", id: "answer", tabindex: "0", "aria-label": "Answer", "aria-live": "off" });
  const citations = h("ol", { class: "citations", id: "citations" });
  const timings = h("div", { id: "timings", class: "timings", tabindex: "0", "aria-label": "Timings" },
    table(["Stage", "Time#"], []));
  main.append(h("h1", { text: "Playground" }),
    h("form", { class: "card", onsubmit: (event) => {
      event.preventDefault();
      askQuestion(collection.value, question.value, { ask, badges, answer, citations, timings });
    } },
    h("div", { class: "row" }, field("Collection", collection)),
    field("Question", question), h("p", {}, ask)),
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "answer-h" }, h("h2", { id: "answer-h", text: "Answer" }), badges, answer),
      h("section", { class: "card", "aria-labelledby": "timings-h" }, h("h2", { id: "timings-h", text: "Timings" }), timings)),
    h("section", { class: "card", "aria-labelledby": "citations-h" }, h("h2", { id: "citations-h", text: "Citations" }), citations));
  api("GET", "/v1/collections").then(({ collections }) => {
    collection.replaceChildren(...collections.map((c) => h("option", { value: c.name, text: c.name })));
    if (!collections.length) say("No collection yet: create one under Collections.");
  }).catch(fail);
}

function showBadges(badges, mode, degraded, cache) {
  badges.replaceChildren(h("span", { class: "muted", text: "mode" }),
    h("span", { class: `badge ${modeKind(mode)}`, id: "mode", "data-mode": mode, text: mode }),
    ...(degraded || []).map((d) => badge(`${d.stage}: ${d.reason}`, "warn")));
  if (cache) badges.append(badge(`cache ${cache.layer}${cache.stale ? " (stale)" : ""}`, "ok"));
}

function showCitations(list, citations) {
  list.replaceChildren(...citations.map((c) => {
    const where = ["source", "page", "heading"].filter((k) => c.metadata && c.metadata[k] !== undefined)
      .map((k) => `${k} ${c.metadata[k]}`).join(" · ");
    return h("li", {}, h("strong", { text: `[${c.index}] ${c.doc_id}` }),
      where ? h("span", { class: "muted", text: ` — ${where}` }) : null,
      h("p", { class: "passage", text: c.text }));
  }));
}

function showTimings(box, timings, usage) {
  const rows = Object.entries(timings || {}).map(([stage, t]) => h("tr", {},
    h("td", { text: stage }), h("td", { class: "num", text: `${Number(t).toFixed(1)} ms` })));
  if (usage) {
    rows.push(h("tr", {}, h("td", { text: "tokens (prompt / completion)" }),
      h("td", { class: "num", text: `${usage.prompt_tokens} / ${usage.completion_tokens}` })));
  }
  box.replaceChildren(table(["Stage", "Time#"], rows));
}

/** Asks as `/query` with `stream: true` and shows its Server-Sent Events as they come. */
async function askQuestion(collection, question, ui) {
  ui.ask.disabled = true;
  ui.answer.textContent = "";
  ui.answer.setAttribute("aria-busy", "true");
  ui.citations.replaceChildren();
  showBadges(ui.badges, "…", [], null);
  say("");
  try {
    const response = await fetch(`/v1/collections/${encodeURIComponent(collection)}/query`, {
      method: "POST",
      headers: { ...authHeaders(), "content-type": "application/json" },
      body: JSON.stringify({ query: question, stream: true }),
    });
    const type = response.headers.get("content-type") || "";
    if (!type.startsWith("text/event-stream")) {
      const data = await response.json().catch(() => null);
      if (!response.ok && !(data && data.mode)) throw failure(response.status, data, response.headers.get("retry-after"));
      showBadges(ui.badges, data.mode, data.degraded, data.cache);
      ui.answer.textContent = data.answer;
      showCitations(ui.citations, data.citations || []);
      showTimings(ui.timings, data.timings_ms, data.usage);
      return;
    }
    let degraded = [];
    await readEvents(response.body, (name, data) => {
      if (name === "meta") {
        degraded = data.degraded;
        showBadges(ui.badges, data.mode, degraded, data.cache);
        showCitations(ui.citations, data.citations);
      } else if (name === "delta") {
        ui.answer.append(data.text);
        ui.answer.scrollTop = ui.answer.scrollHeight;
      } else if (name === "restarted") {
        ui.answer.textContent = "";
      } else if (name === "degraded") {
        degraded = degraded.concat([data.degradation]);
        showBadges(ui.badges, data.mode, degraded, null);
      } else if (name === "done") {
        showBadges(ui.badges, data.mode, data.degraded, data.cache);
        showTimings(ui.timings, data.timings_ms, data.usage);
      }
    });
  } catch (error) {
    fail(error);
  } finally {
    ui.ask.disabled = false;
    ui.answer.removeAttribute("aria-busy");
  }
}

/** Reads a `text/event-stream` body, calling `on(event, data)` for each event. */
async function readEvents(body, on) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) on(name, JSON.parse(data.join("\n")));
    }
  }
}

// ---- tenant: usage ---------------------------------------------------------------------------

function usageCharts(usage) {
  const limits = usage.limits || {};
  const days = usage.days.slice().reverse();
  const peak = (f) => Math.max(1, ...days.map(f));
  const chart = (title, f, limit) => h("figure", { class: "card" }, h("figcaption", {}, h("h2", { text: title })),
    h("div", { class: "bars" }, days.length ? days.map((d) => bar(d.day, f(d), peak(f), limit))
      : h("p", { class: "muted", text: "No use in these days." })));
  const storage = usage.storage;
  return [
    h("div", { class: "grid" },
      chart("LLM tokens per day", (d) => d.tokens_in + d.tokens_out, limits.llm_tokens_per_day),
      chart("Embedding tokens per day", (d) => d.embedding_tokens, limits.embedding_tokens_per_day),
      chart("Requests per day", (d) => d.requests, null)),
    h("figure", { class: "card" }, h("figcaption", {}, h("h2", { text: "Stored now" })),
      h("div", { class: "bars" },
        bar("collections", storage.collections, storage.collections, limits.collections),
        bar("documents", storage.documents, storage.documents, limits.documents),
        bar("chunks", storage.chunks, storage.chunks, limits.chunks),
        bar("text bytes", storage.bytes, storage.bytes, limits.bytes))),
    h("p", { class: "muted", text: `Limits: ${Object.entries(limits).map(([k, v]) => `${k} ${number(v)}`).join(", ") || "none"}.` }),
  ];
}

function usageView(main) {
  main.append(h("h1", { text: "Usage" }), h("p", { class: "muted", text: "The last 14 days (UTC), against your limits." }));
  const body = h("div", {});
  main.append(body);
  api("GET", "/v1/usage?days=14").then((usage) => body.replaceChildren(...usageCharts(usage))).catch(fail);
}

// ---- operator: tenants -----------------------------------------------------------------------

const limitFields = [["requests_per_second", "Requests per second"], ["burst", "Burst"],
  ["llm_tokens_per_day", "LLM tokens per day"], ["embedding_tokens_per_day", "Embedding tokens per day"],
  ["collections", "Collections"], ["documents", "Documents"], ["chunks", "Chunks"], ["bytes", "Text bytes"],
  ["concurrent_streams", "Streams at once"]];

function limitInputs(limits = {}) {
  const inputs = {};
  const fields = limitFields.map(([key, text]) => {
    inputs[key] = h("input", { type: "number", min: "0", step: key === "requests_per_second" ? "any" : "1",
      name: key, value: limits[key] ?? "" });
    return field(text, inputs[key]);
  });
  const read = () => Object.fromEntries(Object.entries(inputs).filter(([, i]) => i.value !== "")
    .map(([k, i]) => [k, Number(i.value)]));
  return { fields, read };
}

function tenantsView(main) {
  const name = h("input", { name: "tenant-name", required: true });
  const overQuota = h("select", { name: "over_quota" }, h("option", { value: "degrade", text: "degrade (cache or quotes)" }),
    h("option", { value: "reject", text: "reject (429)" }));
  const limits = limitInputs();
  const list = h("div", {});
  const load = async () => {
    try {
      const { tenants } = await api("GET", "/admin/tenants");
      list.replaceChildren(table(["Tenant", "Id", "Keys#", "Limits", "Created"], tenants.map((t) => h("tr", {},
        h("td", {}, h("a", { href: `#/tenant/${t.id}`, text: t.name })), h("td", { class: "mono", text: t.id }),
        h("td", { class: "num", text: t.keys.length }),
        h("td", { text: Object.entries(t.limits).map(([k, v]) => `${k} ${number(v)}`).join(", ") || "none" }),
        h("td", { text: t.created_at + (t.deleting ? " (being deleted)" : "") })))));
    } catch (error) { fail(error); }
  };
  main.append(h("h1", { text: "Tenants" }),
    h("form", { class: "card", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const tenant = await api("POST", "/admin/tenants", { name: name.value.trim(), limits: limits.read(), over_quota: overQuota.value });
        say(`Created tenant ${tenant.name} (${tenant.id}). Open it to give it a key.`);
        location.hash = `#/tenant/${tenant.id}`;
      } catch (error) { fail(error); }
    } }, h("h2", { text: "New tenant" }),
    h("div", { class: "row" }, field("Name", name), field("Over a day's budget", overQuota), limits.fields),
    h("p", {}, h("button", { type: "submit", text: "Create tenant" }))),
    h("section", { class: "card", "aria-labelledby": "tenants-h" }, h("h2", { id: "tenants-h", text: "All tenants" }), list));
  load();
}

function tenantView(main, id) {
  const path = `/admin/tenants/${encodeURIComponent(id)}`;
  const heading = h("h1", { text: `Tenant ${id}` });
  const keys = h("div", {});
  const shown = h("div", { id: "new-key", "aria-live": "polite" });
  const usage = h("div", {});
  main.append(heading);
  const load = async () => {
    try {
      const tenant = await api("GET", path);
      heading.textContent = `Tenant ${tenant.name}`;
      keys.replaceChildren(table(["Key", "Created", ""], tenant.keys.map((k) => h("tr", {},
        h("td", { class: "mono", text: k.key_id }), h("td", { text: k.created_at }),
        h("td", {}, h("button", { type: "button", class: "danger", text: "Revoke", "aria-label": `Revoke key ${k.key_id}`,
          onclick: async () => {
            try {
              await api("DELETE", `${path}/keys/${encodeURIComponent(k.key_id)}`);
              say(`Revoked ${k.key_id}: requests with it are refused from now on.`);
              shown.replaceChildren();
              load();
            } catch (error) { fail(error); }
          } }))))));
      return tenant;
    } catch (error) { fail(error); return null; }
  };
  load().then((tenant) => {
    if (!tenant) return;
    const limits = limitInputs(tenant.limits);
    const confirmName = h("input", { name: "confirm", autocomplete: "off" });
    main.append(
      h("section", { class: "card", "aria-labelledby": "keys-h" }, h("h2", { id: "keys-h", text: "Keys" }),
        h("button", { type: "button", text: "Create key", onclick: async () => {
          try {
            const made = await api("POST", `${path}/keys`);
            const value = h("output", { class: "mono", id: "key-value", text: made.key });
            shown.replaceChildren(h("div", { class: "keybox" },
              h("strong", { text: "New key — shown this once: copy it now." }), h("p", {}, value),
              h("button", { type: "button", class: "secondary", text: "Copy", onclick: () => navigator.clipboard
                .writeText(made.key).then(() => say("Copied.")).catch(() => say("Select the key and copy it.", "error")) })));
            load();
          } catch (error) { fail(error); }
        } }), shown, keys),
      h("form", { class: "card", onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api("PATCH", path, { limits: limits.read() });
          say("Limits saved.");
        } catch (error) { fail(error); }
      } }, h("h2", { text: "Limits" }), h("div", { class: "row" }, limits.fields),
      h("p", {}, h("button", { type: "submit", text: "Save limits" }))),
      h("section", { "aria-labelledby": "usage-h" }, h("h2", { id: "usage-h", text: "Usage, last 14 days" }), usage),
      h("form", { class: "card row", onsubmit: async (event) => {
        event.preventDefault();
        if (confirmName.value !== tenant.name) { say(`Type ${tenant.name} to delete it.`, "error"); return; }
        try {
          await api("DELETE", path);
          say(`Deleted ${tenant.name}, its keys and its collections.`);
          location.hash = "#/tenants";
        } catch (error) { fail(error); }
      } }, h("h2", { text: "Delete tenant", class: "full" }),
      field(`Type ${tenant.name} to delete it with its collections`, confirmName),
      h("button", { type: "submit", class: "danger", text: "Delete tenant" })));
    api("GET", `${path}/usage?days=14`).then((u) => usage.replaceChildren(...usageCharts(u))).catch(fail);
  });
}

// ---- operator: health ------------------------------------------------------------------------

/** Prometheus text: `[{name, labels, value}]`. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const [, k, v] of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v.replace(/\\(.)/g, "$1");
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

const history = [];
const WINDOW_S = 300;

/**
 * Keeps a scrape; returns the oldest kept within the window (to subtract from now) and what the
 * difference covers. The first scrape has nothing before it: its counts are since the start.
 */
function remember(samples) {
  const now = Date.now() / 1000;
  history.push({ at: now, samples });
  while (history.length > 2 && history[0].at < now - WINDOW_S) history.shift();
  const then = history[0];
  const covers = history.length === 1 ? "since the server started"
    : `over the last ${Math.round(now - then.at)} s this console has watched (up to 5 minutes)`;
  return { samples: then.samples, covers };
}

/** Sum of `name`'s samples by the label `by`, now minus then (counter increases in the window). */
function increase(now, then, name, by, where = () => true) {
  const total = (samples) => {
    const sums = {};
    for (const s of samples) if (s.name === name && where(s.labels)) sums[by(s.labels)] = (sums[by(s.labels)] || 0) + s.value;
    return sums;
  };
  const a = total(now);
  const b = then === now ? {} : total(then);
  return Object.fromEntries(Object.entries(a).map(([k, v]) => [k, Math.max(0, v - (b[k] || 0))]));
}

/** The q-quantile of a histogram's bucket counts (`{le: count}`), as Prometheus interpolates it. */
function quantile(q, buckets) {
  const bounds = Object.entries(buckets).map(([le, c]) => [le === "+Inf" ? Infinity : Number(le), c]).sort((a, b) => a[0] - b[0]);
  const total = bounds.length ? bounds[bounds.length - 1][1] : 0;
  if (!total) return NaN;
  const rank = q * total;
  let [prevBound, prevCount] = [0, 0];
  for (const [bound, count] of bounds) {
    if (count >= rank) {
      if (bound === Infinity) return prevBound;
      return prevBound + ((bound - prevBound) * (rank - prevCount)) / Math.max(count - prevCount, 1e-9);
    }
    [prevBound, prevCount] = [bound, count];
  }
  return prevBound;
}

function healthView(main) {
  const ready = h("div", {});
  const breakers = h("div", { id: "breakers" });
  const queues = h("div", {});
  const modes = h("div", { id: "modes" });
  const caches = h("div", {});
  const routes = h("div", {});
  const updated = h("p", { class: "muted", "aria-live": "off" });
  const card = (id, title, body) => h("section", { class: "card", "aria-labelledby": id }, h("h2", { id, text: title }), body);
  main.append(h("h1", { text: "Health" }), updated,
    h("div", { class: "grid" }, card("ready-h", "Readiness", ready), card("breakers-h", "Breakers", breakers),
      card("queues-h", "Queues", queues), card("modes-h", "Answers by mode", modes),
      card("caches-h", "Cache hit ratio per layer", caches)),
    card("routes-h", "Latency per route", routes));
  every(2000, async () => {
    try {
      const [readiness, text] = await Promise.all([
        fetch("/readyz", { headers: authHeaders() }).then((r) => r.json()),
        fetch("/metrics").then((r) => r.text()),
      ]);
      const now = parseMetrics(text);
      const { samples: then, covers } = remember(now);
      renderReadiness(ready, breakers, readiness);
      queues.replaceChildren(table(["Worker", "Lane", "Waiting#"], now.filter((s) => s.name === "ragway_worker_queue_depth")
        .map((s) => h("tr", {}, h("td", { text: s.labels.worker }), h("td", { text: s.labels.lane }),
          h("td", { class: "num", text: number(s.value) })))));
      renderModes(modes, increase(now, then, "ragway_answers_total", (l) => l.mode));
      renderCaches(caches, increase(now, then, "ragway_cache_requests_total", (l) => `${l.layer} ${l.result}`));
      renderRoutes(routes, now, then);
      updated.textContent = `Updated ${new Date().toLocaleTimeString()} (every 2 s); counts ${covers}.`;
    } catch (error) { fail(error); }
  });
}

function renderReadiness(ready, breakers, r) {
  ready.replaceChildren(h("p", {}, badge(r.ready ? "ready" : "not ready", r.ready ? "ok" : "bad"),
    ` auth ${r.auth}`, r.quotas ? ` · quotas ${r.quotas}` : ""));
  breakers.replaceChildren(table(["Dependency", "Breaker", "Next probe"], Object.entries(r.dependencies || {}).map(([dep, state]) =>
    h("tr", { "data-dependency": dep }, h("td", { text: dep }), h("td", { class: `state-${state}`, text: state.replace("_", "-") }),
      h("td", { text: r.next_probe_ms && r.next_probe_ms[dep] !== undefined ? `in ${(r.next_probe_ms[dep] / 1000).toFixed(1)} s` : "—" })))));
}

function renderModes(box, counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const peak = Math.max(1, ...Object.values(counts));
  box.replaceChildren(h("div", { class: "bars" }, Object.entries(counts).sort().map(([mode, n]) => bar(mode, n, peak, null))),
    h("p", { class: "muted", text: `${number(total)} answers.` }));
}

function renderCaches(box, counts) {
  const layers = {};
  for (const [key, n] of Object.entries(counts)) {
    const [layer, result] = key.split(" ");
    layers[layer] = layers[layer] || { hit: 0, all: 0 };
    if (result === "hit" || result === "stale") layers[layer].hit += n;
    layers[layer].all += n;
  }
  box.replaceChildren(table(["Layer", "Hit ratio#", "Lookups#"], Object.entries(layers).sort().map(([layer, c]) => h("tr", {},
    h("td", { text: layer }), h("td", { class: "num", text: c.all ? `${((100 * c.hit) / c.all).toFixed(0)} %` : "—" }),
    h("td", { class: "num", text: number(c.all) })))));
}

function renderRoutes(box, now, then) {
  const name = "ragway_request_duration_seconds_bucket";
  const byRoute = {};
  const delta = increase(now, then, name, (l) => `${l.route}\u0000${l.le}`);
  for (const [key, n] of Object.entries(delta)) {
    const [route, le] = key.split("\u0000");
    (byRoute[route] = byRoute[route] || {})[le] = n;
  }
  const rows = Object.entries(byRoute).map(([route, buckets]) => {
    const count = Math.max(...Object.values(buckets));
    return [route, count, quantile(0.5, buckets), quantile(0.99, buckets)];
  }).filter(([, count]) => count > 0).sort((a, b) => b[1] - a[1]);
  box.replaceChildren(table(["Route", "Requests#", "p50#", "p99#"], rows.map(([route, count, p50, p99]) => h("tr", {},
    h("td", { class: "mono wrap", text: route }), h("td", { class: "num", text: number(count) }),
    h("td", { class: "num", text: ms(p50) }), h("td", { class: "num", text: ms(p99) })))));
}

// ---- operator: faults ------------------------------------------------------------------------

function faultsView(main) {
  const stage = h("select", { name: "stage", required: true });
  const kind = h("select", { name: "kind" }, ["error", "timeout", "delay"].map((k) => h("option", { value: k, text: k })));
  const delay = h("input", { type: "number", name: "delay_ms", min: "0", value: "500" });
  const duration = h("input", { type: "number", name: "duration_s", min: "1", max: "86400", value: "120" });
  const active = h("div", { id: "active-faults" });
  const modes = h("div", {});
  main.append(h("h1", { text: "Faults" }),
    h("p", { class: "muted", text: "Make a stage fail, hang or slow down for a while, and watch the answers' modes change." }),
    h("form", { class: "card row", onsubmit: async (event) => {
      event.preventDefault();
      const body = { stage: stage.value, kind: kind.value, duration_s: Number(duration.value) };
      if (kind.value === "delay") body.delay_ms = Number(delay.value);
      try {
        await api("POST", "/admin/faults", body);
        say(`${stage.value}: ${kind.value} for ${duration.value} s.`);
      } catch (error) { fail(error); }
    } }, h("h2", { text: "Inject a fault", class: "full" }), field("Stage", stage), field("Kind", kind),
    field("Delay (ms, for delay)", delay), field("For (s)", duration), h("button", { type: "submit", text: "Inject" })),
    h("section", { class: "card", "aria-labelledby": "active-h" }, h("h2", { id: "active-h", text: "Active faults" }), active,
      h("p", {}, h("button", { type: "button", class: "secondary", text: "Clear all faults", onclick: async () => {
        try { await api("DELETE", "/admin/faults"); say("Every fault cleared."); } catch (error) { fail(error); }
      } }))),
    h("section", { class: "card", "aria-labelledby": "fmodes-h" }, h("h2", { id: "fmodes-h", text: "Answers by mode" }), modes));
  fetch("/readyz", { headers: authHeaders() }).then((r) => r.json()).then((r) => {
    stage.replaceChildren(...Object.keys(r.dependencies || {}).map((d) => h("option", { value: d, text: d })));
  }).catch(fail);
  every(2000, async () => {
    try {
      const [{ faults }, text] = await Promise.all([api("GET", "/admin/faults"), fetch("/metrics").then((r) => r.text())]);
      active.replaceChildren(table(["Stage", "Kind", "Delay#", "Left#"], faults.map((f) => h("tr", {},
        h("td", { text: f.stage }), h("td", { text: f.kind }), h("td", { class: "num", text: f.kind === "delay" ? `${f.delay_ms} ms` : "—" }),
        h("td", { class: "num", text: `${f.remaining_s.toFixed(0)} s` })))));
      const now = parseMetrics(text);
      const { samples: then, covers } = remember(now);
      renderModes(modes, increase(now, then, "ragway_answers_total", (l) => l.mode));
      modes.append(h("p", { class: "muted", text: `Counts ${covers}.` }));
    } catch (error) { fail(error); }
  });
}

// ---- operator: cache and snapshots -----------------------------------------------------------

function maintenanceView(main) {
  const collection = h("select", { name: "cache-collection" }, h("option", { value: "", text: "every collection" }));
  const layer = h("select", { name: "layer" }, h("option", { value: "", text: "every layer" }),
    ["l1", "l2", "l3"].map((l) => h("option", { value: l, text: l })));
  const collections = h("div", {});
  const files = h("div", {});
  main.append(h("h1", { text: "Cache & snapshots" }),
    h("form", { class: "card row", onsubmit: async (event) => {
      event.preventDefault();
      const body = {};
      if (collection.value) body.collection = collection.value;
      if (layer.value) body.layer = layer.value;
      try {
        const { invalidated } = await api("POST", "/admin/cache/invalidate", body);
        say(`Dropped ${number(invalidated)} cached entries.`);
      } catch (error) { fail(error); }
    } }, h("h2", { text: "Invalidate the caches", class: "full" }), field("Collection", collection), field("Layer", layer),
    h("button", { type: "submit", text: "Invalidate" })),
    h("section", { class: "card", "aria-labelledby": "snap-h" }, h("h2", { id: "snap-h", text: "Collections" }), collections),
    h("section", { class: "card", "aria-labelledby": "files-h" }, h("h2", { id: "files-h", text: "Snapshot files" }), files));
  const loadFiles = async () => {
    try {
      const { snapshots } = await api("GET", "/admin/snapshots");
      files.replaceChildren(table(["Snapshot", "Collection", "Taken", "Size#", "Restore as"], snapshots.slice().reverse().map((s) => {
        const target = h("input", { name: "restore-name", value: s.collection, "aria-label": `Restore ${s.snapshot} as` });
        return h("tr", {}, h("td", { class: "mono", text: s.snapshot }), h("td", { text: s.collection }), h("td", { text: s.taken_at }),
          h("td", { class: "num", text: bytes(s.bytes) }),
          h("td", {}, h("form", { class: "row", onsubmit: async (event) => {
            event.preventDefault();
            try {
              const made = await api("POST", `/admin/collections/${encodeURIComponent(target.value)}/restore`, { snapshot: s.snapshot });
              say(`Restored ${made.name}: ${number(made.documents)} documents.`);
              loadCollections();
            } catch (error) { fail(error); }
          } }, target, h("button", { type: "submit", text: "Restore" }))));
      })));
    } catch (error) { fail(error); }
  };
  const loadCollections = async () => {
    try {
      const list = (await api("GET", "/admin/collections")).collections;
      collection.replaceChildren(h("option", { value: "", text: "every collection" }),
        ...list.map((c) => h("option", { value: c.name, text: c.name })));
      collections.replaceChildren(table(["Collection", "Documents#", "Stored#", ""], list.map((c) => h("tr", {},
        h("td", { class: "mono", text: c.name }), h("td", { class: "num", text: number(c.documents) }),
        h("td", { class: "num", text: bytes(c.bytes) }),
        h("td", {}, h("button", { type: "button", class: "secondary", text: "Snapshot", "aria-label": `Snapshot ${c.name}`,
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              const taken = await api("POST", `/admin/collections/${encodeURIComponent(c.name)}/snapshot`);
              say(`Wrote ${taken.snapshot} (${number(taken.documents)} documents).`);
              loadFiles();
            } catch (error) { fail(error); } finally { event.target.disabled = false; }
          } }))))));
    } catch (error) { fail(error); }
  };
  loadCollections();
  loadFiles();
}
