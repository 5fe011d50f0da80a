// The page's pieces: elements, the status line, numbers, tables, bars and badges, usage charts.


/** An element: `attrs` sets properties for `on*` and `text`, attributes otherwise. */
export function h(tag, attrs, ...kids) {
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

export const $ = (selector, root = document) => root.querySelector(selector);

/** A labelled control: `<label>text <input …></label>`. */
export function field(text, control) {
  return h("label", {}, text, control);
}

export function say(message, kind = "info") {
  const status = $("#status");
  status.className = "status" + (kind === "error" ? " error" : "");
  status.textContent = message || "";
}

export const number = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
export const bytes = (n) => {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
};
export const ms = (s) => (s === null || s === undefined || Number.isNaN(s) ? "—" : `${(s * 1000).toFixed(1)} ms`);


export function table(headers, rows, caption) {
  return h("div", { class: "scroll" }, h("table", {},
    caption ? h("caption", { class: "muted", text: caption }) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: x.endsWith("#") ? "num" : null,
      text: x.replace(/#$/, "") })))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted", text: "None." })))));
}

/** One bar of a chart: its name, a track filled to `value / max` with `limit` marked, the figures. */
export function bar(name, value, max, limit) {
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

export function badge(text, kind) {
  return h("span", { class: `badge ${kind}`, text });
}

export function modeKind(mode) {
  return mode === "normal" ? "ok" : mode === "error" ? "bad" : "warn";
}

export const fusionMethods = ["adaptive", "rrf", "convex", "dbsf"];


export function usageCharts(usage) {
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
