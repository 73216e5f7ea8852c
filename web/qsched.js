// Q-Sched frontend extension: coefficient curves on the Q-Sched nodes, preset metadata on
// Load Q-Sched Preset, calibration progress and score surface on Q-Sched Calibrate.
// The panels redraw on widget, link and graph changes (and when their size changes), not from canvas frames:
// the frontend's "Nodes 2.0" mode draws nodes as DOM and never calls onDrawForeground.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { identity, linearSchedule, listSchedule } from "./lib/curves.js";
import { sourceOf } from "./lib/links.js";
import { drawCurves, drawSurface, surfacePoints } from "./lib/plot.js";
import { quantizerWarning, smoothingOf } from "./lib/quantspec.js";

const CURVE_NODES = new Set(["QSchedCoefficients", "QSchedKSampler", "QSchedSampler", "QSchedLoadPreset"]);
const PRESET_NODE = "QSchedLoadPreset";
const CALIBRATE_NODE = "QSchedCalibrate";
const CALIBRATION_EVENT = "qsched.calibration";
const QUANTIZED_LOADERS = new Set(["QSchedQuantizedCheckpointLoader", "QSchedQuantizedDiffusionModelLoader",
  "QSchedCalibratedDiffusionModelLoader"]);
const CALIBRATED_LOADERS = new Set(["QSchedCalibratedDiffusionModelLoader"]);  // GPTQ rounding (presets record it)

const widget = (node, ...names) => node.widgets?.find((w) => names.includes(w.name));
const value = (node, ...names) => widget(node, ...names)?.value;
const fmt = (v, digits = 3) => (Number.isFinite(v) ? v.toFixed(digits) : "?");

// ---- presets (GET /qsched/presets, served by nodes/routes.py) ----

const presets = { byName: new Map(), loaded: null };

function loadPresets(force = false) {
  if (!presets.loaded || force) {
    presets.loaded = api
      .fetchApi("/qsched/presets")
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((data) => {
        presets.byName = new Map(data.presets.map((p) => [p.name, p]));
        presets.error = null;
      })
      .catch((e) => { presets.error = `preset list unavailable: ${e.message}`; })
      .finally(requestRefresh);
  }
  return presets.loaded;
}

function selectedPreset(node) {
  const file = value(node, "preset");
  if (!file) return { error: "no preset selected" };
  const name = String(file).replace(/\.json$/, "");
  const entry = presets.byName.get(name);
  if (!entry) {
    if (presets.loaded && !presets.pending) {  // maybe saved after the list was read: read it again once
      presets.pending = true;
      loadPresets(true).finally(() => (presets.pending = false));
    }
    return { name, error: presets.error || `preset ${name} not found in the preset folder` };
  }
  return entry.valid ? { name, summary: entry.summary } : { name, error: `invalid preset: ${entry.reason}`, invalid: true };
}

// ---- where each node's schedule comes from ----

// The schedule Q-Sched Coefficients will build from its widgets (nodes/sampling.py build_schedule).
function coefficientsSchedule(node) {
  const steps = Number(value(node, "steps"));
  if (value(node, "mode") === "list") return listSchedule(steps, value(node, "c_x_list"), value(node, "c_eps_list"));
  return linearSchedule(steps, Number(value(node, "c_x_start")), Number(value(node, "c_eps_start")),
    Number(value(node, "c_x_end") ?? 1), Number(value(node, "c_eps_end") ?? 1));
}

const withState = (error, state) => Object.assign(error, { state });

// -> { schedule, note, warning } or throws with the reason the curve cannot be drawn (error.state says how bad).
function scheduleOf(node, depth = 0) {
  if (depth > 8) throw new Error("schedule input loops");
  switch (node.comfyClass ?? node.type) {
    case "QSchedCoefficients":
      return { schedule: coefficientsSchedule(node), note: "" };
    case PRESET_NODE: {
      const p = selectedPreset(node);
      if (p.error) throw withState(new Error(p.error), p.invalid ? "invalid" : "error");
      return { schedule: { c_x: p.summary.c_x, c_eps: p.summary.c_eps }, note: `preset ${p.name}`,
               warning: presetQuantizerWarning(node, p.summary) };
    }
    case CALIBRATE_NODE:
      if (node.qschedBest) return { schedule: node.qschedBest, note: "calibrated" };
      throw withState(new Error("not calibrated yet: the curve shows once Q-Sched Calibrate has run"), "pending");
    case "QSchedKSampler":
    case "QSchedSampler": {
      let source;
      try { source = sourceOf(node, "schedule")?.node; } catch (e) { throw withState(e, "pending"); }
      if (source) {
        const { schedule, note } = scheduleOf(source, depth + 1);
        const steps = value(node, "steps");
        const warning = steps != null && Number(steps) !== schedule.c_x.length
          ? `schedule has ${schedule.c_x.length} steps but steps is ${steps}: sampling will refuse it` : null;
        return { schedule, note: note || `from ${source.title}`, warning };
      }
      const steps = Number(value(node, "steps")) || 4;
      return { schedule: identity(steps), note: "no schedule: identity (all 1)" };
    }
    default:
      throw withState(new Error(`schedule from ${node.title}: not known before the graph runs`), "pending");
  }
}

// ---- the panel: one DOM widget with a caption line and a canvas ----

function addPanel(node, height) {
  const root = document.createElement("div");
  root.className = "qsched-panel";
  root.dataset.qschedPanel = node.comfyClass;
  Object.assign(root.style, { display: "flex", flexDirection: "column", gap: "2px", font: "11px sans-serif",
    color: "var(--input-text, #ddd)", overflow: "hidden" });
  const info = document.createElement("div");
  info.className = "qsched-info";
  Object.assign(info.style, { whiteSpace: "pre-line", lineHeight: "13px" });
  const canvas = document.createElement("canvas");
  Object.assign(canvas.style, { width: "100%", flex: "1 1 auto", minHeight: "40px",
    background: "rgba(0,0,0,0.25)", borderRadius: "4px" });
  root.append(info, canvas);
  const w = node.addDOMWidget("qsched_panel", "qsched_panel", root, {
    serialize: false, hideOnZoom: false, getMinHeight: () => height, getMaxHeight: () => height * 2,
  });
  w.serialize = false;
  const fit = () => node.setSize([Math.max(node.size[0], 260), Math.max(node.size[1], node.computeSize()[1])]);
  fit();
  // A saved workflow restores its own (smaller) node size after nodeCreated: grow so the panel stays inside.
  chain(node, "onConfigure", () => requestAnimationFrame(fit));
  const panel = { root, info, canvas, signature: null, draw: () => {} };
  // Shown, hidden, resized (by the user, by either node renderer): draw again at the new size.
  new ResizeObserver(() => panel.draw()).observe(canvas);
  return panel;
}

function show(panel, state, text) {
  panel.root.dataset.state = state;
  panel.info.textContent = text;
  panel.info.style.color = { invalid: "#ff6b6b", error: "#ff6b6b", warning: "#ffb74d" }[state] ?? "";
}

// Redraw only when what is plotted (or the panel's size) changed.
function refreshCurve(node, panel) {
  if (!node.graph) return;  // removed, or replaced by its copy inside a new subgraph
  let result, error, errorState;
  try { result = scheduleOf(node); } catch (e) { error = e.message; errorState = e.state ?? "error"; }
  const size = `${panel.canvas.clientWidth}x${panel.canvas.clientHeight}`;
  const signature = JSON.stringify([result, error, size, node.comfyClass === PRESET_NODE && selectedPreset(node)]);
  if (signature === panel.signature) return;
  panel.signature = signature;
  if (error) {
    show(panel, errorState, error);
    panel.canvas.getContext("2d").clearRect(0, 0, panel.canvas.width, panel.canvas.height);
    delete panel.root.dataset.cX; delete panel.root.dataset.cEps;
    return;
  }
  const { schedule, note, warning } = result;
  panel.root.dataset.cX = schedule.c_x.map((v) => fmt(v)).join(",");
  panel.root.dataset.cEps = schedule.c_eps.map((v) => fmt(v)).join(",");
  const lines = [`${schedule.c_x.length} steps${note ? ` · ${note}` : ""}`];
  if (node.comfyClass === PRESET_NODE) lines.unshift(...presetLines(selectedPreset(node).summary));
  if (warning) lines.push(`⚠ ${warning}`);
  show(panel, warning ? "warning" : "ok", lines.join("\n"));
  drawCurves(panel.canvas, schedule);
}

// The quantizer of the model wired into the preset loader, from its loader's widgets (null: another loader), and
// the warning the node logs when it differs from the one the preset was fitted on; undefined source: no warning.
function presetQuantizerWarning(node, summary) {
  let loader;
  try { loader = sourceOf(node, "model")?.node; } catch { return null; }
  if (!loader || !summary.quantizer) return null;
  const calibrated = CALIBRATED_LOADERS.has(loader.comfyClass);
  const quantizer = QUANTIZED_LOADERS.has(loader.comfyClass)
    ? { spec: value(loader, "quantization"), backend: value(loader, "backend"),
        rounding: calibrated ? "GPTQ" : undefined,
        smoothing: calibrated ? smoothingOf(value(loader, "smoothing"), value(loader, "quantization")) : undefined }
    : null;
  return quantizerWarning(summary.model, summary.quantizer, quantizer);
}

function presetLines(s) {
  const gain = Number.isFinite(s.identity_score) && Number.isFinite(s.best_score) && s.identity_score !== 0
    ? ` (${s.best_score >= s.identity_score ? "+" : ""}${(100 * (s.best_score / s.identity_score - 1)).toFixed(1)}%)` : "";
  return [
    `model: ${s.model ?? "?"}${s.family ? ` (${s.family})` : ""}${s.example ? " · example" : ""}`,
    `${s.quant ?? "?"} · ${s.sampler ?? "?"} · ${s.steps ?? "?"} steps`
      + (s.quantizer ? ` · fitted on ${s.quantizer.spec} (${s.quantizer.backend}`
        + `${s.quantizer.rounding ? `, ${s.quantizer.rounding} rounding` : ""}`
        + `${s.quantizer.smoothing ? `, ${s.quantizer.smoothing} smoothing` : ""})` : ""),
    Number.isFinite(s.best_score) ? `${s.scorer ?? "score"}: identity ${fmt(s.identity_score)} → best ${fmt(s.best_score)}${gain}`
      : "scores: not recorded",
  ];
}

function chain(object, method, after) {
  const original = object[method];
  object[method] = function (...args) {
    const r = original?.apply(this, args);
    after.apply(this, args);
    return r;
  };
}

// ---- when to redraw ----

// Nodes that carry a curve panel, in any graph (the root graph or a subgraph).
const curveNodes = new Set();
const calibrateNodes = new Set();
let refreshPending = false;

// One redraw of every curve panel on the next frame, however many changes came in before it: a panel's
// curve can depend on any node upstream (through reroutes and subgraphs), so all are checked, and each
// draws only if what it shows changed.
function requestRefresh() {
  if (refreshPending) return;
  refreshPending = true;
  requestAnimationFrame(() => {
    refreshPending = false;
    for (const node of curveNodes) node.qschedPanel.draw();
  });
}

// Widget edits (the canvas calls callback and onWidgetChanged, Nodes 2.0 only the widget's callback) and link
// changes of this node; edits elsewhere arrive through the workflow's change events (setup below).
function watchNode(node) {
  for (const w of node.widgets ?? []) chain(w, "callback", requestRefresh);
  chain(node, "onWidgetChanged", requestRefresh);
  chain(node, "onConnectionsChange", requestRefresh);
  chain(node, "onConfigure", requestRefresh);
}

// ---- calibration progress and score surface ----

function showCalibration(node, panel) {
  const c = node.qschedCalibration;
  if (!c) { show(panel, "idle", "calibration: not run yet"); return; }
  const points = c.trace ?? [];
  const scores = points.map((p) => p.score).filter(Number.isFinite);
  const best = Number.isFinite(c.best_score) ? c.best_score : scores.length ? Math.max(...scores) : NaN;
  const lines = [`candidates ${points.length} · images ${c.done ?? 0} / ${c.budget ?? "?"}`,
    `best ${fmt(best)}` + (Number.isFinite(c.identity_score) ? ` · identity ${fmt(c.identity_score)}` : "")];
  if (c.finished) lines.push(`finished${c.preset ? ` · preset ${c.preset}` : ""}`);
  if (c.heldout?.verdict) lines.push(`held-out: better than identity: ${c.heldout.verdict}`);
  show(panel, c.finished ? "finished" : "running", lines.join("\n"));
  const cells = surfacePoints(points);
  Object.assign(panel.root.dataset, { candidates: String(points.length), done: String(c.done ?? 0),
    points: String(cells.length), best: fmt(best) });
  drawSurface(panel.canvas, cells);
}

// Progress events name a node by its execution id: "12", or "5:12" for node 12 inside subgraph node 5.
function nodeByExecutionId(executionId) {
  let graph = app.rootGraph ?? app.graph, node = null;
  for (const id of String(executionId).split(":")) {
    node = graph?.getNodeById(Number(id)) ?? graph?.getNodeById(id);
    graph = node?.subgraph;
  }
  return node;
}

function updateCalibration(node, patch) {
  if (!node || node.comfyClass !== CALIBRATE_NODE) return;
  const c = (node.qschedCalibration = { ...(node.qschedCalibration ?? {}), ...patch });
  if (patch.point) c.trace = [...(c.trace ?? []), patch.point];
  if (patch.best?.c_x) node.qschedBest = { c_x: patch.best.c_x, c_eps: patch.best.c_eps };
  if (patch.finished && patch.preset) loadPresets(true);  // the preset it saved shows up on Load Q-Sched Preset
  node.qschedPanel.draw();
  requestRefresh();  // sampler panels fed by this node show its best schedule
}

app.registerExtension({
  name: "comfyui-qsched.widgets",

  async setup() {
    loadPresets();
    // The calibrate node's progress bar (images done / planned), set through ComfyUI's V3 progress API, which
    // sends the state of every node of the prompt, keyed by execution id.
    api.addEventListener("progress_state", ({ detail }) => {
      for (const [id, state] of Object.entries(detail?.nodes ?? {})) {
        updateCalibration(nodeByExecutionId(id), { done: state.value, budget: state.max });
      }
    });
    // The calibrate node's own event: best so far, the candidate just scored, the final trace.
    api.addEventListener(CALIBRATION_EVENT, ({ detail }) => {
      if (detail?.node != null) updateCalibration(nodeByExecutionId(detail.node), detail);
    });
    api.addEventListener("execution_start", () => {
      for (const node of calibrateNodes) node.qschedCalibration = null;
    });
    // Any change the workflow records (edits, links, nodes added or removed, in subgraphs too).
    api.addEventListener("graphChanged", requestRefresh);
  },

  afterConfigureGraph() {
    requestRefresh();
  },

  async refreshComboInNodes() {
    await loadPresets(true);
  },

  nodeCreated(node) {
    // Any node added or removed can change where a schedule comes from (a second instance of a subgraph, a
    // node taking the place of another): check the panels once it is in its graph.
    requestRefresh();
    chain(node, "onRemoved", () => { curveNodes.delete(node); calibrateNodes.delete(node); requestRefresh(); });
    if (CURVE_NODES.has(node.comfyClass)) {
      const panel = (node.qschedPanel = addPanel(node, node.comfyClass === PRESET_NODE ? 150 : 110));
      panel.draw = () => refreshCurve(node, panel);
      curveNodes.add(node);
      watchNode(node);
      if (node.comfyClass === PRESET_NODE) loadPresets();
    } else if (QUANTIZED_LOADERS.has(node.comfyClass)) {
      watchNode(node);  // its quantization and backend decide the preset panel's quantizer warning
    } else if (node.comfyClass === CALIBRATE_NODE) {
      const panel = (node.qschedPanel = addPanel(node, 170));
      panel.draw = () => showCalibration(node, panel);
      calibrateNodes.add(node);
      panel.draw();
      chain(node, "onExecuted", function (output) {
        // ui output of the node: {qsched_calibration: [{trace, best, best_score, identity_score, ...}]}
        const summary = output?.qsched_calibration?.[0];
        if (summary) updateCalibration(this, { ...summary, finished: true });
      });
    }
  },
});
