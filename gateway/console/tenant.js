// A tenant's pages: collections (settings, uploads, documents, jobs), the playground, usage.

import { api, authHeaders, every, fail, failure } from "./api.js";
import { badge, bytes, field, fusionMethods, h, modeKind, number, say, table, usageCharts } from "./page.js";

// ---- tenant: collections ---------------------------------------------------------------------

export function collectionsView(main) {
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

export function collectionView(main, name) {
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

export function playgroundView(main) {
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

export function usageView(main) {
  main.append(h("h1", { text: "Usage" }), h("p", { class: "muted", text: "The last 14 days (UTC), against your limits." }));
  const body = h("div", {});
  main.append(body);
  api("GET", "/v1/usage?days=14").then((usage) => body.replaceChildren(...usageCharts(usage))).catch(fail);
}
