// ragway's console: a page over ragway's public API and nothing else. Every action is a call a
// script could make (the same routes, the same key); the key stays in this tab's sessionStorage.
// No build step: ES modules, served by the binary as they are here.

import { authHeaders, fail, session, stopTimers, whenSignedOut } from "./api.js";
import * as operator from "./operator.js";
import { $, field, h, say } from "./page.js";
import * as tenant from "./tenant.js";

// ---- sign in ---------------------------------------------------------------------------------

/** Which kind of key `key` is: the admin key opens /admin, a tenant's key /v1. */
async function identify(key) {
  const admin = await fetch("/admin/faults", { headers: authHeaders(key) });
  if (admin.ok) return { role: "operator", label: "operator" };
  const own = await fetch("/v1/usage?days=1", { headers: authHeaders(key) });
  if (own.ok) {
    const usage = await own.json();
    return { role: "tenant", label: usage.tenant ? `tenant ${usage.name} (${usage.tenant})` : "open mode (no keys)" };
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
    collections: tenant.collectionsView, collection: tenant.collectionView, playground: tenant.playgroundView,
    usage: tenant.usageView,
  },
  operator: {
    tenants: operator.tenantsView, tenant: operator.tenantView, health: operator.healthView,
    faults: operator.faultsView, maintenance: operator.maintenanceView,
  },
};

whenSignedOut(signOut);

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
    // The page shown, chosen again, is read again (a hash that does not change renders nothing).
    const again = (event) => {
      if (location.hash !== href) return;
      event.preventDefault();
      render();
    };
    nav.append(h("a", { href, text, "aria-current": current ? "page" : null, onclick: again }));
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
