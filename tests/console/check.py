"""ragway's console in a real headless Chromium (Debian's), driven by Playwright from PyPI.

Usage: check.py BASE_URL ADMIN_KEY FILE... SCREENSHOT_DIR

As an operator and as a tenant, each in its own browser context (its own sessionStorage):
sign in with the keyboard, make a tenant and its key (shown once), create a collection, upload
files and follow their job's progress bar to done, find documents by id, ask a question and see
the streamed answer with citations and mode `normal`, inject a dense-store fault and see the next
answer `keyword_only`, take a snapshot and restore it, invalidate the caches, revoke the key and
see the tenant signed out. Every page is screenshotted into SCREENSHOT_DIR; every page's form
controls must have a label, no page may raise a script error, and on a phone-sized screen no
page may scroll sideways.
"""

import os
import re
import shutil
import sys

from playwright.sync_api import expect, sync_playwright

base, admin_key, *files, shots = sys.argv[1:]
os.makedirs(shots, exist_ok=True)
chromium = os.environ.get("RAGWAY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    sys.exit("Chromium is needed: apt-get install -y chromium (or set RAGWAY_CHROMIUM)")

problems = []
LONG = 180_000  # ms: an answer of the local model on a busy 2-core machine


def watch(page, who):
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda e: problems.append(f"{who}: script error: {e}"))

    def console(message):
        # Chromium logs every refused request (the sign-in's probe of /admin, a revoked key's 401).
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(f"{who}: console error: {message.text}")

    page.on("console", console)
    return page


def shot(page, name):
    page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(c => c.type !== 'hidden' && !c.labels.length && !c.getAttribute('aria-label'))
            .map(c => c.name || c.outerHTML)"""
    )
    if unlabelled:
        problems.append(f"{name}: controls without a label: {unlabelled}")
    low = page.evaluate(CONTRAST)
    if low:
        problems.append(f"{name}: text below WCAG AA contrast: {low[:5]}")


# Every visible text's colour against the first opaque background behind it: at least 4.5:1
# (3:1 for large text), as WCAG 2 AA asks; disabled controls are exempt, as WCAG exempts them.
CONTRAST = """() => {
  const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] === 1) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest('[disabled]') || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden') continue;
    const [a, b] = [lum(rgb(style.color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) low.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return low;
}"""


def fits(page, name):
    """The page, once its data came, does not scroll sideways; screenshotted."""
    page.wait_for_timeout(500)
    wide = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    if wide > 1:
        problems.append(f"{name}: scrolls sideways by {wide}px")
    shot(page, name)


def sign_in(page, key):
    page.goto(base + "/console")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    field = page.get_by_label("API key")
    expect(field).to_be_focused()
    field.fill(key)
    field.press("Enter")  # the keyboard alone signs in


def nav(page, name):
    page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()


def ask(page, collection, question, mode):
    nav(page, "Playground")
    page.get_by_label("Collection").select_option(collection)
    page.get_by_label("Question").fill(question)
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("#mode")).to_have_text(mode, timeout=LONG)
    citations = page.locator("#citations li")
    expect(citations.first).to_be_visible()
    top = page.locator("#citations").bounding_box()["y"]
    expect(page.get_by_role("button", name="Ask")).to_be_enabled(timeout=LONG)
    # The streamed answer filled its own box: nothing below it moved.
    moved = page.locator("#citations").bounding_box()["y"] - top
    if abs(moved) > 1:
        problems.append(f"the citations moved {moved}px while the answer streamed")
    expect(page.locator("#timings")).to_contain_text("ms")
    answer = page.locator("#answer").inner_text().strip()
    assert answer, "the answer box stayed empty"
    return citations


with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    laptop = {"viewport": {"width": 1280, "height": 800}}

    # The operator: a tenant with limits, and its key, shown once.
    op = watch(browser.new_context(**laptop).new_page(), "operator")
    sign_in(op, "not-a-key")
    expect(op.locator("#status")).to_contain_text("not accepted")
    shot(op, "01-sign-in-refused")
    sign_in(op, admin_key)
    expect(op.get_by_role("heading", name="Tenants", level=1)).to_be_visible()
    op.get_by_label("Name", exact=True).fill("acme")
    op.get_by_label("LLM tokens per day").fill("200000")
    op.get_by_role("button", name="Create tenant").click()
    expect(op.get_by_role("heading", name="Tenant acme")).to_be_visible()
    tenant_url = op.url
    tenant_id = tenant_url.rsplit("/", 1)[1]
    op.get_by_role("button", name="Create key").click()
    key = op.locator("#key-value").inner_text()
    assert re.fullmatch(r"rgw_\S+", key), key
    shot(op, "02-operator-tenant-key")
    op.get_by_label("Documents", exact=True).fill("500")
    op.get_by_role("button", name="Save limits").click()
    expect(op.locator("#status")).to_contain_text("Limits saved")
    nav(op, "Tenants")
    expect(op.get_by_role("row", name=re.compile("acme")).first).to_contain_text("documents 500")
    # The live view stays open while the tenant works, and must show that work as it happens.
    nav(op, "Health")
    expect(op.locator("#breakers tr[data-dependency=dense]")).to_contain_text("closed")

    # The tenant: a collection, files in, their job followed to done.
    tenant = watch(browser.new_context(**laptop).new_page(), "tenant")
    sign_in(tenant, key)
    expect(tenant.get_by_role("heading", name="Collections", level=1)).to_be_visible()
    expect(tenant.get_by_role("banner")).to_contain_text(f"tenant acme ({tenant_id})")
    tenant.get_by_label("Name", exact=True).fill("handbook")
    tenant.get_by_role("button", name="Create", exact=True).click()
    tenant.get_by_role("link", name="handbook", exact=True).click()
    expect(tenant.get_by_role("heading", name="handbook", level=1)).to_be_visible()
    tenant.get_by_label("Files (PDF").set_input_files(files)
    # Every state the upload's line shows, in order.
    tenant.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const state = document.querySelector('#uploads .state');
            if (state && window.seen[window.seen.length - 1] !== state.textContent) window.seen.push(state.textContent);
        }).observe(document.querySelector('#uploads'), {subtree: true, childList: true, characterData: true});
    }""")
    tenant.get_by_role("button", name="Upload", exact=True).click()
    upload = tenant.locator(".upload").first
    expect(upload.locator(".state")).to_have_text("done", timeout=LONG)
    seen = tenant.evaluate("() => window.seen")
    assert seen[0] == "uploading" and "queued" in seen and seen[-1] == "done", seen
    assert upload.locator("progress").evaluate("p => p.value") == 100
    names = [os.path.basename(f) for f in files]
    expect(upload).to_contain_text(f"{len(files)}/{len(files)} documents")
    documents = tenant.locator("section", has=tenant.get_by_role("heading", name="Documents"))
    for name in names:
        expect(documents.get_by_role("cell", name=name, exact=True)).to_be_visible()
    tenant.get_by_label("Find by id (prefix)").fill(names[-1][:4])
    tenant.get_by_role("button", name="Find").click()
    expect(documents.get_by_role("cell", name=names[0], exact=True)).to_have_count(0)
    expect(documents.get_by_role("cell", name=names[-1], exact=True)).to_be_visible()
    jobs = tenant.locator("section", has=tenant.get_by_role("heading", name="Jobs"))
    expect(jobs.get_by_role("cell", name="done", exact=True)).to_be_visible()
    expect(tenant.locator("#summary")).to_contain_text(f"{len(files)} documents")
    shot(tenant, "03-tenant-collection")
    # A setting saved, then read back by the page.
    tenant.get_by_label("Fusion").select_option("rrf")
    tenant.get_by_role("button", name="Save", exact=True).click()
    expect(tenant.locator("#status")).to_contain_text("Fusion saved")
    tenant.reload()
    expect(tenant.get_by_label("Fusion")).to_have_value("rrf")
    tenant.get_by_label("Fusion").select_option("")
    tenant.get_by_role("button", name="Save", exact=True).click()
    expect(tenant.locator("#status")).to_contain_text("Fusion saved")

    # A question: the streamed answer, its citations, `normal`, the stages' timings.
    citations = ask(tenant, "handbook", "How often is the espresso machine descaled?", "normal")
    expect(tenant.locator("#citations")).to_contain_text("descaled")
    shot(tenant, "04-tenant-playground-normal")

    nav(tenant, "Usage")
    expect(tenant.get_by_role("heading", name="LLM tokens per day")).to_be_visible()
    expect(tenant.get_by_role("img", name=re.compile(r"of 200,000"))).to_have_count(1)
    shot(tenant, "05-tenant-usage")

    # The operator's live view, refreshed by itself from ragway's metrics: the tenant's work.
    routes = op.locator("section", has=op.get_by_role("heading", name="Latency per route"))
    expect(routes).to_contain_text("/v1/collections/{name}/query")
    expect(routes).to_contain_text("/v1/collections/{name}/files")
    expect(op.locator("#modes").get_by_role("img", name=re.compile(r"^normal: [1-9]"))).to_have_count(1)
    expect(op.locator("#breakers tr[data-dependency=dense]")).to_contain_text("closed")
    shot(op, "06-operator-health")

    # A dense-store fault: the next answer is keyword_only, and says why.
    nav(op, "Faults")
    op.get_by_label("Stage").select_option("dense")
    op.get_by_label("Kind").select_option("error")
    op.get_by_label("For (s)").fill("600")
    op.get_by_role("button", name="Inject").click()
    expect(op.locator("#active-faults")).to_contain_text("dense")
    shot(op, "07-operator-faults")
    ask(tenant, "handbook", "At what time does the cafe open on Saturdays?", "keyword_only")
    expect(tenant.locator("#badges")).to_contain_text("dense: error")
    shot(tenant, "08-tenant-playground-keyword-only")
    op.get_by_role("button", name="Clear all faults").click()
    expect(op.locator("#active-faults")).to_contain_text("None.")

    # Snapshots, restore, cache invalidation.
    nav(op, "Cache & snapshots")
    full = f"{tenant_id}.handbook"
    op.get_by_role("button", name=f"Snapshot {full}").click()
    expect(op.locator("#status")).to_contain_text("Wrote")
    restore = op.get_by_label(re.compile(r"^Restore .* as$")).first
    restore.fill(f"{tenant_id}.handbook-copy")
    op.get_by_role("button", name="Restore", exact=True).first.click()
    expect(op.locator("#status")).to_contain_text(f"Restored {tenant_id}.handbook-copy: {len(files)} documents")
    op.get_by_role("button", name="Invalidate").click()
    expect(op.locator("#status")).to_contain_text("cached entries")
    shot(op, "09-operator-cache-and-snapshots")

    # The tenant's pages on a phone: each fits the screen's width.
    phone = watch(browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                      has_touch=True).new_page(), "phone")
    sign_in(phone, key)
    expect(phone.get_by_role("heading", name="Collections", level=1)).to_be_visible()
    pages = [("Collections", "Collections"), ("Playground", "Playground"), ("Usage", "Usage")]
    for page, heading in pages:
        nav(phone, page)
        expect(phone.get_by_role("heading", name=heading, level=1)).to_be_visible()
        fits(phone, f"12-phone-tenant-{page.lower()}")
    nav(phone, "Collections")
    phone.get_by_role("link", name="handbook", exact=True).click()
    expect(phone.get_by_role("heading", name="handbook", level=1)).to_be_visible()
    fits(phone, "12-phone-tenant-collection")

    # A document deleted, and the restored copy dropped, from the tenant's pages.
    nav(tenant, "Collections")
    tenant.get_by_role("link", name="handbook", exact=True).click()
    tenant.get_by_role("button", name=f"Delete {names[-1]}").click()
    expect(tenant.locator("#summary")).to_contain_text(f"{len(files) - 1} documents")
    nav(tenant, "Collections")
    tenant.get_by_role("link", name="handbook-copy", exact=True).click()
    tenant.get_by_role("button", name="Drop collection…").click()
    tenant.get_by_label("Type handbook-copy to confirm").fill("handbook-copy")
    tenant.get_by_role("button", name="Drop for good").click()
    expect(tenant.get_by_role("heading", name="Collections", level=1)).to_be_visible()
    expect(tenant.get_by_role("link", name="handbook-copy", exact=True)).to_have_count(0)
    expect(tenant.get_by_role("link", name="handbook", exact=True)).to_be_visible()

    # The key revoked: the tenant's next step signs it out.
    op.goto(tenant_url)
    op.get_by_role("button", name=re.compile(r"^Revoke key ")).click()
    expect(op.locator("#status")).to_contain_text("Revoked")
    nav(tenant, "Usage")
    expect(tenant.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(tenant.locator("#status")).to_contain_text("no longer accepted")
    shot(tenant, "10-tenant-signed-out")

    # The operator's pages on a phone (the phone's tenant key is gone: it signs in again).
    nav(phone, "Usage")
    expect(phone.get_by_role("heading", name="Sign in")).to_be_visible()
    sign_in(phone, admin_key)
    for page in ["Tenants", "Health", "Faults", "Cache & snapshots"]:
        nav(phone, page)
        expect(phone.get_by_role("heading", name=page, level=1)).to_be_visible()
        fits(phone, f"11-phone-{page.split()[0].lower()}")
    browser.close()

if problems:
    sys.exit("\n".join(problems))
print(f"console checked; screenshots in {shots}")
