// Drives the real ComfyUI frontend in Debian's Chromium for tests/test_browser_*.py.
// usage: node drive.mjs <config.json>; prints one JSON object (the report) on the last line of stdout.
// config: {url, workflow (path of a UI-format workflow), screenshot (png path), chromium, queue (bool),
//          timeout_ms, prepare (body of an async JS function run in the page after the workflow is loaded;
//          its return value lands in report.prepared), settings ({id: value} posted before the page opens),
//          thumbnail (jpg path: the graph's nodes, cropped, after loading), require_types (node classes to wait for),
//          done (JS expression over `executed` that ends a queued run), expect_saved_image (default true)}
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

  const settings = { "Comfy.TutorialCompleted": true, "Comfy.Minimap.Visible": false, ...(config.settings ?? {}) };
  for (const [id, v] of Object.entries(settings)) {
    await fetch(`${config.url}/api/settings/${encodeURIComponent(id)}`, { method: "POST", body: JSON.stringify(v) });
  }
  await page.goto(config.url, { waitUntil: "domcontentloaded" });
  // Ready when the graph exists, node definitions are registered (ours included) and our extension loaded.
  await page.waitForFunction((types) => {
    const app = window.comfyAPI?.app?.app;
    const registered = window.LiteGraph?.registered_node_types ?? {};
    return app?.graph && types.every((t) => t in registered)
      && (app.extensions ?? []).some((e) => e.name === "comfyui-qsched.widgets");
  }, config.require_types ?? ["KSampler"]);
  step("extension loaded");

  const workflow = config.workflow ? JSON.parse(readFileSync(config.workflow, "utf8")) : undefined;
  await page.evaluate(async (wf) => {
    await window.comfyAPI.app.app.loadGraphData(wf);
  }, workflow);
  if (config.prepare) {
    report.prepared = await page.evaluate(`(async () => { const app = window.comfyAPI.app.app; ${config.prepare} })()`);
  }
  // Let the panels draw (they redraw on canvas frames) and the preset list arrive.
  await page.waitForTimeout(1500);
  await page.evaluate(async () => {
    const app = window.comfyAPI.app.app;
    await app.extensionManager?.command?.execute?.("Comfy.Canvas.FitView");
    app.graph.setDirtyCanvas(true, true);
  });
  await page.waitForTimeout(500);

  report.nodes = await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    return app.graph._nodes.map((n) => {
      const panel = n.qschedPanel?.root;
      return {
        id: n.id, type: n.comfyClass ?? n.type, title: n.title,
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
  if (config.thumbnail) {
    const clip = await page.evaluate(() => {
      const app = window.comfyAPI.app.app, { ds } = app.canvas, box = app.canvas.canvas.getBoundingClientRect();
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30, pad = 12;
      const nodes = app.graph._nodes;
      const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - title));
      const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
      const sx = (x) => box.left + (x + ds.offset[0]) * ds.scale, sy = (y) => box.top + (y + ds.offset[1]) * ds.scale;
      const left = Math.max(box.left, sx(x0) - pad), top = Math.max(box.top, sy(y0) - pad);
      return { x: left, y: top, width: Math.min(box.right, sx(x1) + pad) - left, height: Math.min(box.bottom, sy(y1) + pad) - top };
    });
    await page.screenshot({ path: config.thumbnail, type: "jpeg", quality: 80, clip });
  }

  if (config.queue) {
    await page.evaluate(() => {
      const { api } = window.comfyAPI.api;
      window.__qsched = { executed: [], errors: [] };
      api.addEventListener("executed", ({ detail }) => window.__qsched.executed.push(detail));
      api.addEventListener("execution_error", ({ detail }) => window.__qsched.errors.push(detail));
      // A prompt the server rejects (400 with node_errors) never runs: record it instead of waiting.
      const queuePrompt = api.queuePrompt.bind(api);
      api.queuePrompt = async (...args) => {
        try { return await queuePrompt(...args); } catch (e) {
          window.__qsched.errors.push({ rejected: String(e?.message ?? e), response: e?.response ?? null });
          throw e;
        }
      };
    });
    await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1));
    step("queued");
    // Done on an execution error, or when config.done (a JS expression over `executed`, the list of
    // "executed" events) holds; by default when an image was saved.
    const done = config.done ?? 'executed.some((d) => d.output?.images?.some((i) => i.type === "output"))';
    await page.waitForFunction(`(() => { const executed = window.__qsched.executed;
      return window.__qsched.errors.length > 0 || (${done}); })()`);
    report.execution_errors = await page.evaluate(() => window.__qsched.errors);
    report.executed = await page.evaluate(() => window.__qsched.executed);
    step("executed", { errors: report.execution_errors.length });
    if (!report.execution_errors.length && config.expect_saved_image !== false) {
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
