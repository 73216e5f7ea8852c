// Q-Sched frontend extension: coefficient curves on the Q-Sched nodes, preset metadata on
// Load Q-Sched Preset, calibration progress and score surface on Q-Sched Calibrate.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { checkSchedule, expandList, identity, linspace, parseList } from "./lib/curves.js";
import { drawCurves, drawSurface, surfacePoints } from "./lib/plot.js";

const CURVE_NODES = new Set(["QSchedCoefficients", "QSchedKSampler", "QSchedSampler", "QSchedLoadPreset"]);
const PRESET_NODE = "QSchedLoadPreset";
const CALIBRATE_NODE = "QSchedCalibrate";
const CALIBRATION_EVENT = "qsched.calibration";

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
      .finally(() => app.graph?.setDirtyCanvas(true, true));
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

function coefficientsSchedule(node) {
  const steps = Number(value(node, "steps"));
  if (!(steps >= 1)) throw new Error("steps must be at least 1");
  const xList = value(node, "c_x_list", "c_x", "x_list");
  const epsList = value(node, "c_eps_list", "c_eps", "eps_list");
  const mode = String(value(node, "mode", "form") ?? "");
  const useLists = mode ? /list/i.test(mode) : Boolean(String(xList ?? "").trim() || String(epsList ?? "").trim());
  if (useLists) {
    return checkSchedule({
      c_x: expandList(parseList(xList), steps, "c_x list"),
      c_eps: expandList(parseList(epsList), steps, "c_eps list"),
    });
  }
  const num = (...names) => Number(value(node, ...names));
  const xEnd = value(node, "x_end", "c_x_end") ?? 1, epsEnd = value(node, "eps_end", "c_eps_end") ?? 1;
  return checkSchedule({
    c_x: linspace(num("x_start", "c_x_start"), Number(xEnd), steps),
    c_eps: linspace(num("eps_start", "c_eps_start"), Number(epsEnd), steps),
  });
}

function upstreamNode(node, inputName) {
  const slot = node.inputs?.findIndex((i) => i.name === inputName) ?? -1;
  return slot >= 0 && node.inputs[slot].link != null ? node.getInputNode(slot) : null;
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
      return { schedule: { c_x: p.summary.c_x, c_eps: p.summary.c_eps }, note: `preset ${p.name}` };
    }
    case CALIBRATE_NODE:
      if (node.qschedBest) return { schedule: node.qschedBest, note: "calibrated" };
      throw withState(new Error("not calibrated yet: the curve shows once Q-Sched Calibrate has run"), "pending");
    case "Reroute": {
      const source = node.inputs?.[0]?.link != null ? node.getInputNode(0) : null;
      if (!source) throw new Error("schedule input comes from an unconnected reroute");
      return scheduleOf(source, depth + 1);
    }
    case "QSchedKSampler":
    case "QSchedSampler": {
      const source = upstreamNode(node, "schedule");
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
  return { root, info, canvas, signature: null };
}

function show(panel, state, text) {
  panel.root.dataset.state = state;
  panel.info.textContent = text;
  panel.info.style.color = { invalid: "#ff6b6b", error: "#ff6b6b", warning: "#ffb74d" }[state] ?? "";
}

// Redraw only when what is plotted (or the panel's size) changed; called on every canvas frame.
function refreshCurve(node, panel) {
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

function presetLines(s) {
  const gain = Number.isFinite(s.identity_score) && Number.isFinite(s.best_score) && s.identity_score !== 0
    ? ` (${s.best_score >= s.identity_score ? "+" : ""}${(100 * (s.best_score / s.identity_score - 1)).toFixed(1)}%)` : "";
  return [
    `model: ${s.model ?? "?"}${s.family ? ` (${s.family})` : ""}${s.example ? " · example" : ""}`,
    `${s.quant ?? "?"} · ${s.sampler ?? "?"} · ${s.steps ?? "?"} steps`,
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

function updateCalibration(nodeId, patch) {
  const node = app.graph?.getNodeById(Number(nodeId)) ?? app.graph?.getNodeById(nodeId);
  if (!node || node.comfyClass !== CALIBRATE_NODE) return;
  const c = (node.qschedCalibration = { ...(node.qschedCalibration ?? {}), ...patch });
  if (patch.point) c.trace = [...(c.trace ?? []), patch.point];
  if (patch.best?.c_x) node.qschedBest = { c_x: patch.best.c_x, c_eps: patch.best.c_eps };
  if (patch.finished && patch.preset) loadPresets(true);  // the preset it saved shows up on Load Q-Sched Preset
  showCalibration(node, node.qschedPanel);
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "comfyui-qsched.widgets",

  async setup() {
    loadPresets();
    // ComfyUI's progress bar of the running node: candidates done / budget.
    api.addEventListener("progress", ({ detail }) => {
      if (detail?.node != null) updateCalibration(detail.node, { done: detail.value, budget: detail.max });
    });
    // The calibrate node's own event: best so far, the candidate just scored, the final trace.
    api.addEventListener(CALIBRATION_EVENT, ({ detail }) => {
      if (detail?.node != null) updateCalibration(detail.node, detail);
    });
    api.addEventListener("execution_start", () => {
      for (const node of app.graph?._nodes ?? []) if (node.comfyClass === CALIBRATE_NODE) node.qschedCalibration = null;
    });
  },

  async refreshComboInNodes() {
    await loadPresets(true);
  },

  nodeCreated(node) {
    if (CURVE_NODES.has(node.comfyClass)) {
      const panel = (node.qschedPanel = addPanel(node, node.comfyClass === PRESET_NODE ? 150 : 110));
      chain(node, "onDrawForeground", function () { refreshCurve(this, panel); });
      if (node.comfyClass === PRESET_NODE) loadPresets();
    } else if (node.comfyClass === CALIBRATE_NODE) {
      const panel = (node.qschedPanel = addPanel(node, 170));
      showCalibration(node, panel);
      chain(node, "onExecuted", function (output) {
        // ui output of the node: {qsched_calibration: [{trace, best, best_score, identity_score, ...}]}
        const summary = output?.qsched_calibration?.[0];
        if (summary) updateCalibration(this.id, { ...summary, finished: true });
      });
    }
  },
});
