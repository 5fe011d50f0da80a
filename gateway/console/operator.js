// The operator's pages: tenants and their keys and limits, live health, faults, cache and
// snapshots.

import { api, authHeaders, every, fail } from "./api.js";
import { increase, parseMetrics, quantile, remember } from "./metrics.js";
import { badge, bar, bytes, field, h, ms, number, say, table, usageCharts } from "./page.js";

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

export function tenantsView(main) {
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

export function tenantView(main, id) {
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

export function healthView(main) {
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

export function faultsView(main) {
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

export function maintenanceView(main) {
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
