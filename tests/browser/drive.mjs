// Drives the real ComfyUI frontend in Debian's Chromium for tests/test_browser_*.py.
// usage: node drive.mjs <config.json>; prints one JSON object (the report) on the last line of stdout.
// config: {url, workflow (path of a UI-format workflow), screenshot (png path), chromium, queue (bool),
//          timeout_ms, panel_classes ([node classes that must carry the Q-Sched panel])}
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const timeout = config.timeout_ms ?? 120000;
const report = { console_errors: [], page_errors: [], steps: [] };
const step = (name, data = {}) => report.steps.push({ name, t: Date.now(), ...data });

const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "qsched-chromium-")), {
  executablePath: config.chromium ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
  viewport: { width: 1600, height: 1000 },
});
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on("console", (m) => { if (m.type() === "error") report.console_errors.push(m.text()); });
  page.on("pageerror", (e) => report.page_errors.push(String(e?.stack ?? e)));
  page.on("response", (r) => { if (r.status() >= 400) report.console_errors.push(`HTTP ${r.status()} ${r.url()}`); });

  await page.goto(config.url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => window.comfyAPI?.app?.app?.graph && document.querySelector("canvas"));
  // Extensions load asynchronously after the graph exists: wait for ours.
  await page.waitForFunction(() => window.comfyAPI.app.app.extensionManager?.extensions?.some?.((e) => e.name === "comfyui-qsched.widgets")
    ?? window.comfyAPI.app.app.extensions?.some((e) => e.name === "comfyui-qsched.widgets"));
  step("extension loaded");

  const workflow = JSON.parse(readFileSync(config.workflow, "utf8"));
  await page.evaluate(async (wf) => {
    await window.comfyAPI.app.app.loadGraphData(wf);
  }, workflow);
  // Let the panels draw (they redraw on canvas frames) and the preset list arrive.
  await page.waitForTimeout(1500);
  await page.evaluate(() => { const app = window.comfyAPI.app.app; app.canvas.ds.offset = [10, 10]; app.graph.setDirtyCanvas(true, true); });
  await page.waitForTimeout(500);

  report.nodes = await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    return app.graph._nodes.map((n) => {
      const panel = n.qschedPanel?.root;
      return {
        id: n.id, type: n.comfyClass, title: n.title,
        widgets: (n.widgets ?? []).map((w) => w.name),
        has_errors: Boolean(n.has_errors),
        panel: panel ? { state: panel.dataset.state, text: panel.querySelector(".qsched-info")?.textContent ?? "",
          c_x: panel.dataset.cX ?? null, c_eps: panel.dataset.cEps ?? null,
          visible: panel.getBoundingClientRect().width > 0 && panel.offsetParent !== null } : null,
      };
    });
  });
  step("workflow loaded", { nodes: report.nodes.length });
  if (config.before_screenshot) await page.screenshot({ path: config.before_screenshot });

  if (config.queue) {
    await page.evaluate(() => {
      const { api } = window.comfyAPI.api;
      window.__qsched = { executed: [], errors: [] };
      api.addEventListener("executed", ({ detail }) => window.__qsched.executed.push(detail));
      api.addEventListener("execution_error", ({ detail }) => window.__qsched.errors.push(detail));
    });
    await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1));
    step("queued");
    await page.waitForFunction(() => window.__qsched.errors.length > 0
      || window.__qsched.executed.some((d) => d.output?.images?.some((i) => i.type === "output")));
    report.execution_errors = await page.evaluate(() => window.__qsched.errors);
    report.executed = await page.evaluate(() => window.__qsched.executed);
    step("executed", { errors: report.execution_errors.length });
    if (!report.execution_errors.length) {
      // The saved image must be shown on the node: an <img> from /view that loaded.
      const handle = await page.waitForFunction(() => {
        const app = window.comfyAPI.app.app;
        const imgs = app.graph._nodes.flatMap((n) => n.imgs ?? []);
        const loaded = imgs.filter((img) => img.complete && img.naturalWidth > 0 && /\/view\?/.test(img.src));
        return loaded.length ? loaded.map((img) => ({ src: img.src, width: img.naturalWidth, height: img.naturalHeight })) : null;
      });
      report.shown_images = await handle.jsonValue();
      step("image shown");
    }
    report.nodes_after = await page.evaluate(() => window.comfyAPI.app.app.graph._nodes
      .filter((n) => n.qschedPanel).map((n) => ({ id: n.id, type: n.comfyClass,
        state: n.qschedPanel.root.dataset.state, text: n.qschedPanel.info.textContent })));
    await page.waitForTimeout(500);
  }
  if (config.screenshot) await page.screenshot({ path: config.screenshot });
  report.ok = true;
} catch (e) {
  report.ok = false;
  report.error = String(e?.stack ?? e);
} finally {
  await context.close();
}
console.log(JSON.stringify(report));
