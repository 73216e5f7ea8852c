// Drives the real ComfyUI frontend in Debian's Chromium for tests/test_browser_*.py.
// usage: node drive.mjs <config.json>; prints one JSON object (the report) on the last line of stdout.
// config: {url, workflow (path of a UI-format workflow), screenshot (png path), chromium, queue (bool),
//          timeout_ms, prepare (body of an async JS function run in the page after the workflow is loaded;
//          its return value lands in report.prepared), settings ({id: value} posted before the page opens),
//          thumbnail (jpg path: the graph's nodes, cropped, after loading), require_types (node classes to wait for),
//          done (JS expression over `executed` that ends a queued run), expect_saved_image (default true),
//          vue_nodes (bool: the frontend's "Nodes 2.0" mode, setting Comfy.VueNodes.Enabled; default false),
//          missing_models (bool: report what the frontend says about missing models after loading)}
// The report says which frontend and node renderer ran, what each Q-Sched panel shows and how much of its
// canvas is painted in the curve colours, and every deprecation warning with the stack that raised it.
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const timeout = config.timeout_ms ?? 120000;
const report = { console_errors: [], page_errors: [], steps: [] };
const step = (name, data = {}) => report.steps.push({ name, t: Date.now(), ...data });

// In the page: every node of the graph shown, with what its Q-Sched panel (if any) shows and has painted.
function readNodes() {
  const app = window.comfyAPI.app.app;
  const COLOURS = { c_x: [0x4f, 0xc3, 0xf7], c_eps: [0xff, 0xb7, 0x4d] };  // web/lib/plot.js
  const pixels = (canvas) => {
    const { width, height } = canvas;
    if (!width || !height) return { width, height, painted: 0, c_x: 0, c_eps: 0 };
    const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    const near = (i, [r, g, b]) => Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 40;
    const count = { width, height, painted: 0, c_x: 0, c_eps: 0 };
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] === 0) continue;
      count.painted++;
      if (data[i + 3] > 200) { if (near(i, COLOURS.c_x)) count.c_x++; else if (near(i, COLOURS.c_eps)) count.c_eps++; }
    }
    count.painted /= width * height;
    return count;
  };
  return app.graph.nodes.map((n) => {
    const panel = n.qschedPanel?.root;
    const box = panel?.getBoundingClientRect();
    return {
      id: n.id, type: n.comfyClass ?? n.type, title: n.title,
      widgets: (n.widgets ?? []).map((w) => w.name),
      has_errors: Boolean(n.has_errors),  // 1.5x also flags a node whose model file is missing
      registered: n.type in (window.LiteGraph.registered_node_types ?? {}),
      panel: panel ? { state: panel.dataset.state, text: panel.querySelector(".qsched-info")?.textContent ?? "",
        c_x: panel.dataset.cX ?? null, c_eps: panel.dataset.cEps ?? null, ...panel.dataset,
        visible: box.width > 0 && box.height > 0 && panel.offsetParent !== null,
        in_vue_node: Boolean(panel.closest(".lg-node[data-node-id]")),
        pixels: pixels(n.qschedPanel.canvas) } : null,
    };
  });
}

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
  // Deprecation warnings with their stacks: LiteGraph's go through its onDeprecationWarning list, which holds
  // console.warn as it was when LiteGraph was built (so wrap it first), and are repeated only with
  // alwaysRepeatWarnings (so one raised by the frontend itself cannot hide the same one raised by us).
  await page.addInitScript(() => {
    window.__qschedDeprecations = [];
    const warn = console.warn;
    console.warn = function (...args) {
      const message = args.map(String).join(" ");
      if (/deprecat/i.test(message)) window.__qschedDeprecations.push({ message, stack: new Error().stack });
      return warn.apply(this, args);
    };
    let liteGraph;
    Object.defineProperty(window, "LiteGraph", { configurable: true, enumerable: true, get: () => liteGraph,
      set: (v) => { liteGraph = v; if (v && "alwaysRepeatWarnings" in v) v.alwaysRepeatWarnings = true; } });
  });

  // No workflow restored from an earlier page: each run starts from the frontend's default graph.
  const settings = { "Comfy.TutorialCompleted": true, "Comfy.Minimap.Visible": false, "Comfy.Workflow.Persist": false,
    "Comfy.VueNodes.Enabled": Boolean(config.vue_nodes), ...(config.settings ?? {}) };
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
  // The frontend loads its default workflow asynchronously once the page is ready; landing after ours, it would
  // replace it. Wait for it, then load ours until the graph is still ours two seconds later.
  await page.waitForFunction(() => window.comfyAPI.app.app.graph.nodes.length > 0, null, { timeout: 15000 })
    .catch(() => step("no default workflow shown"));
  const shown = () => page.evaluate(() => window.comfyAPI.app.app.graph.nodes.length);
  for (let attempt = 1; workflow; attempt++) {
    await page.evaluate(async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }, workflow);
    await page.waitForTimeout(1000);
    if (await shown() === workflow.nodes.length) {
      await page.waitForTimeout(1000);
      if (await shown() === workflow.nodes.length) break;
    }
    if (attempt === 5) {
      throw new Error(`the graph shows ${await shown()} nodes, not the workflow's ${workflow.nodes.length}`);
    }
  }
  if (config.prepare) {
    report.prepared = await page.evaluate(`(async () => { const app = window.comfyAPI.app.app; ${config.prepare} })()`);
  }
  // Let the panels draw and the preset list arrive.
  await page.waitForTimeout(1500);
  await page.evaluate(async () => {
    const app = window.comfyAPI.app.app;
    await app.extensionManager?.command?.execute?.("Comfy.Canvas.FitView");
    app.graph.setDirtyCanvas(true, true);
  });
  await page.waitForTimeout(500);

  Object.assign(report, await page.evaluate(() => ({
    frontend: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
    vue_nodes_setting: window.comfyAPI.app.app.extensionManager?.setting?.get?.("Comfy.VueNodes.Enabled") ?? null,
    vue_node_elements: document.querySelectorAll(".lg-node[data-node-id]").length,
  })));
  report.nodes = await page.evaluate(readNodes);
  step("workflow loaded", { nodes: report.nodes.length });
  if (config.before_screenshot) await page.screenshot({ path: config.before_screenshot });
  if (config.thumbnail) {
    const clip = await page.evaluate(() => {
      const app = window.comfyAPI.app.app, { ds } = app.canvas, box = app.canvas.canvas.getBoundingClientRect();
      const title = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30, pad = 12;
      const nodes = app.graph.nodes;
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
        // On the canvas a node's images are node.imgs; in Nodes 2.0 they are <img> elements in the node.
        const imgs = app.graph.nodes.flatMap((n) => n.imgs ?? [])
          .concat([...document.querySelectorAll(".lg-node[data-node-id] img")]);
        const loaded = imgs.filter((img) => img.complete && img.naturalWidth > 0 && /\/view\?/.test(img.src));
        return loaded.length ? loaded.map((img) => ({ src: img.src, width: img.naturalWidth, height: img.naturalHeight })) : null;
      });
      report.shown_images = await handle.jsonValue();
      step("image shown");
    }
    await page.waitForTimeout(500);
    report.nodes_after = (await page.evaluate(readNodes)).filter((n) => n.panel)
      .map((n) => ({ id: n.id, type: n.type, ...n.panel }));
  }
  if (config.screenshot) await page.screenshot({ path: config.screenshot });
  if (config.missing_models) {
    // Frontends up to 1.2x open a dialog listing missing models that carry a download url; from 1.5x a notice
    // ("View details") opens a list of the missing files, each followed by the folder it belongs in.
    report.missing_models_dialog = await page.evaluate(() => Boolean(document.querySelector(".comfy-missing-models")));
    report.missing_models_listed = null;
    const [major, minor] = (report.frontend ?? "0.0").split(".").map(Number);
    const details = page.getByText("View details", { exact: true }).first();
    if (major > 1 || minor >= 50) {
      await details.waitFor({ timeout: 10000 }).catch(() => {});
      if (await details.count()) {
        await details.click();
        await page.getByText("Missing Models", { exact: true }).first().waitFor();
        report.missing_models_listed = await page.evaluate(() => document.body.innerText);
      }
    }
  }
  report.deprecations = await page.evaluate(() => window.__qschedDeprecations);
  report.ok = true;
} catch (e) {
  report.ok = false;
  report.error = String(e?.stack ?? e);
} finally {
  await context.close();
}
console.log(JSON.stringify(report));
