"""The web extension in the real ComfyUI frontend (comfyui-frontend-package) in headless Chromium.

Starts ComfyUI on CPU with the pack and the tiny fixtures (tests/comfy_fixtures.py), opens it in Debian's
Chromium driven by playwright-core (tests/browser/drive.mjs), loads workflows, checks what the extension shows,
queues a workflow and waits for the saved image to appear on its node.

Which frontend and which node renderer:
- the frontend is the one ComfyUI pins, or the `static` folder that env QSCHED_FRONTEND_ROOT names (passed to
  ComfyUI as --front-end-root by tests/comfy_fixtures.py);
- env QSCHED_FRONTEND_MODE (comma-separated, default "classic") lists the node renderers every page test runs in:
  "classic" (the LiteGraph canvas) and "vue" (the frontend's "Nodes 2.0", Vue nodes: setting
  Comfy.VueNodes.Enabled). Each test checks that the renderer asked for is the one that drew the page.
Every page test fails on a deprecation warning raised from the pack's own scripts.

Needs COMFYUI_DIR, /usr/bin/chromium (`apt-get install -y chromium`; or env QSCHED_CHROMIUM) and playwright-core
(`npm ci --prefix tests/browser`); skips naming what is missing. Screenshots go to artifacts/browser/; with
QSCHED_UPDATE_DOCS=1 the classic ones also refresh docs/*.png and the example workflows' thumbnails
(example_workflows/*.jpg).
"""
import json
import os
import re
import shutil
import subprocess
import urllib.request

import pytest

from comfy_fixtures import PACK_DIR_NAME, REPO_ROOT, SD15_CHECKPOINT, combo_options, register_model_folder
from comfyui_qsched.calibration import presets as preset_store
from comfyui_qsched.samplers import QSchedSchedule

BROWSER_DIR = os.path.join(REPO_ROOT, "tests", "browser")
DRIVER = os.path.join(BROWSER_DIR, "drive.mjs")
# Where screenshots and driver reports go (env QSCHED_ARTIFACTS: runs side by side need one each).
ARTIFACTS = os.path.join(os.environ.get("QSCHED_ARTIFACTS") or os.path.join(REPO_ROOT, "artifacts"), "browser")
EXAMPLES = os.path.join(REPO_ROOT, "example_workflows")
UPDATE_DOCS = os.environ.get("QSCHED_UPDATE_DOCS") == "1"
SCORER_FILE = "qsched_browser_clip.safetensors"
PACK_SCRIPTS = f"/extensions/{PACK_DIR_NAME}/"  # where ComfyUI serves web/: a stack through the pack's code
RENDERERS = ("classic", "vue")
MODES = [m.strip() for m in os.environ.get("QSCHED_FRONTEND_MODE", "classic").split(",") if m.strip()]
if not MODES or set(MODES) - set(RENDERERS):
    raise ValueError(f"QSCHED_FRONTEND_MODE={os.environ.get('QSCHED_FRONTEND_MODE')!r}: "
                     f"give one or more of {', '.join(RENDERERS)}, comma-separated")


def _write_tiny_scorer(folder):
    from test_metrics_fixtures import save_open_clip, tiny_vit_clip
    save_open_clip(tiny_vit_clip(seed=7), os.path.join(folder, SCORER_FILE))


register_model_folder("qsched_scorers", _write_tiny_scorer)
OUR_NODES = ("QSchedCoefficients", "QSchedKSampler", "QSchedSampler", "QSchedLoadPreset", "QSchedCalibrate")


@pytest.fixture(scope="module")
def browser():
    """Paths of node and chromium, or skip saying what to install."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("browser tests need Node.js (`node` on PATH)")
    chromium = os.environ.get("QSCHED_CHROMIUM", "/usr/bin/chromium")
    if not os.access(chromium, os.X_OK):
        pytest.skip(f"browser tests need Chromium at {chromium}: apt-get install -y chromium (or set QSCHED_CHROMIUM)")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        pytest.skip("browser tests need playwright-core: npm ci --prefix tests/browser")
    os.makedirs(ARTIFACTS, exist_ok=True)
    return {"node": node, "chromium": chromium}


@pytest.fixture(params=MODES)
def mode(request):
    """The node renderer a page test runs in (env QSCHED_FRONTEND_MODE)."""
    return request.param


def artifact(name, mode):
    return name if mode == "classic" else f"{name}.{mode}"


def frontend_version(report):
    return tuple(int(p) for p in re.findall(r"\d+", report.get("frontend") or "0")[:3])


def run_driver(browser, server, name, timeout_s=240, expected_errors=None, **config):
    """Run drive.mjs with `config`; returns its report. Fails with the driver's error and the server log, or on a
    console or page error from the pack's extension or files that the regex `expected_errors` does not match."""
    config = {"url": server.url, "chromium": browser["chromium"], "timeout_ms": timeout_s * 1000,
              "screenshot": os.path.join(ARTIFACTS, f"{name}.png"), **config}
    config_path = os.path.join(ARTIFACTS, f"{name}.config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    result = subprocess.run([browser["node"], DRIVER, config_path], cwd=BROWSER_DIR, capture_output=True,
                            text=True, timeout=timeout_s + 120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, f"driver failed ({result.returncode}):\n{result.stderr[-4000:]}"
    report = json.loads(lines[-1])
    with open(os.path.join(ARTIFACTS, f"{name}.report.json"), "w") as f:
        json.dump(report, f, indent=1)
    assert report["ok"], f"{report.get('error')}\nsteps: {report['steps']}\nserver log:\n{server.log_tail(3000)}"
    ours = [e for e in report["console_errors"] + report["page_errors"]
            if ("qsched" in e.lower() or "/extensions/" in e) and not (expected_errors and expected_errors.match(e))]
    assert not ours, f"errors from the pack's extension or its files: {ours}"
    return report


def drive(browser, server, name, mode="classic", timeout_s=240, **config):
    """run_driver in renderer `mode`; also checks that `mode` is the renderer that drew the page and that no
    deprecation warning came from the pack's scripts."""
    report = run_driver(browser, server, artifact(name, mode), timeout_s, vue_nodes=mode == "vue", **config)
    if mode == "vue":
        assert report["vue_nodes_setting"] is True and report["vue_node_elements"] > 0, \
            f"Nodes 2.0 did not draw the page (frontend {report['frontend']}): {report['vue_node_elements']} Vue nodes"
    else:
        assert report["vue_node_elements"] == 0, "the classic canvas was asked for but Vue nodes were drawn"
    deprecated = [d for d in report["deprecations"] if PACK_SCRIPTS in d["stack"]]
    assert not deprecated, f"deprecated frontend API used by the pack: {deprecated}"
    return report


def assert_curve_drawn(panel, mode):
    """The panel sits in its node (inside the Vue node in Nodes 2.0) and its canvas shows both curves."""
    assert panel["visible"] and panel["in_vue_node"] == (mode == "vue"), panel
    pixels = panel["pixels"]
    assert pixels["width"] > 100 and pixels["height"] > 30, pixels
    # Both coefficient curves in their colours (web/lib/plot.js): lines and step dots, hundreds of pixels each.
    assert pixels["c_x"] > 50 and pixels["c_eps"] > 50, pixels


def panels(nodes):
    return {n["type"]: n["panel"] for n in nodes if n["panel"] is not None}


def keep_for_docs(mode, *files):
    """With QSCHED_UPDATE_DOCS=1, copy classic-canvas artefacts to their place in the repo: (artefact name,
    destination)."""
    if not UPDATE_DOCS or mode != "classic":
        return
    for name, destination in files:
        destination = os.path.join(REPO_ROOT, destination)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(os.path.join(ARTIFACTS, name), destination)


def floats(csv):
    return [float(v) for v in csv.split(",")]


def _preset(best, identity):
    schedule = QSchedSchedule.linear(4, 1.1, 0.9)
    return preset_store.make_preset(schedule, model_name="tiny-sd15", family="SD15", quant="W4A8", sampler="lcm",
                                    scorer="jaq", scorer_k=1.0, identity_score=identity, best_score=best,
                                    quantizer={"spec": "W4A8-g64-r32", "backend": "simulate"})


@pytest.fixture(scope="module")
def user_presets(comfy_server):
    """A valid and a truncated preset in the server's user preset folder (what Load Q-Sched Preset lists)."""
    folder = os.path.join(comfy_server.user_dir, "qsched_presets")
    preset_store.save_preset(folder, "browser-good", _preset(best=0.32, identity=0.25))
    text = json.dumps(_preset(best=0.3, identity=0.2))
    with open(os.path.join(folder, "browser-truncated.json"), "w") as f:
        f.write(text[: len(text) // 2])
    return folder


BUILD_GRAPH = """
const LG = window.LiteGraph;
const add = (type, pos) => { const n = LG.createNode(type); n.pos = pos; app.graph.add(n); return n; };
const set = (n, name, v) => { const w = n.widgets.find((w) => w.name === name); w.value = v; w.callback?.(v); };
const frame = () => new Promise((r) => setTimeout(r, 400));
const coefficients = add("QSchedCoefficients", [40, 40]);
const sampler = add("QSchedKSampler", [420, 40]);
coefficients.connect(0, sampler, sampler.inputs.findIndex((i) => i.name === "schedule"));
set(coefficients, "steps", 5); set(coefficients, "c_x_start", 1.2); set(coefficients, "c_eps_start", 0.9);
set(sampler, "steps", 5);
const good = add("QSchedLoadPreset", [40, 560]);
set(good, "preset", "browser-good.json");
const bad = add("QSchedLoadPreset", [420, 560]);
set(bad, "preset", "browser-truncated.json");
await frame(); await frame();
const painted = (canvas) => {
  if (!canvas.width || !canvas.height) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0; for (let i = 3; i < data.length; i += 4) count += data[i] > 0;
  return count;
};
const read = (n) => ({ state: n.qschedPanel.root.dataset.state, text: n.qschedPanel.info.textContent,
                       c_x: n.qschedPanel.root.dataset.cX ?? null, painted: painted(n.qschedPanel.canvas) });
const seen = { linspace: read(sampler), preset: read(good), invalid: read(bad) };
set(sampler, "steps", 4); await frame();
seen.mismatch = read(sampler);
set(coefficients, "steps", 4); set(coefficients, "mode", "list");
set(coefficients, "c_x_list", "1.3, 1.2, 1.1, 1"); set(coefficients, "c_eps_list", "1,1, 1 ,1"); await frame();
seen.list = read(sampler);
set(coefficients, "c_x_list", "1.3, oops"); await frame();
seen.bad_list = read(coefficients);
set(coefficients, "c_x_list", "1.3, 1.2, 1.1, 1"); set(coefficients, "c_eps_list", "1"); await frame();
seen.single_value = read(coefficients);  // the node wants one value per step; it does not repeat one
set(coefficients, "c_eps_list", "1, 1, 1, 1"); await frame();
seen.fixed = read(sampler);
// The preset was fitted on W4A8-g64-r32 (simulate): a model from a loader set to another quantizer is named.
const loader = add("QSchedQuantizedCheckpointLoader", [40, 900]);
loader.connect(0, good, good.inputs.findIndex((i) => i.name === "model"));
set(loader, "backend", "simulate"); set(loader, "quantization", "W4A4-g64-r32"); await frame();
seen.other_quantizer = read(good);
set(loader, "quantization", "W4A8-g64-r32"); await frame();
seen.same_quantizer = read(good);
// Reading input.link from the page itself: shows the deprecation collector works on frontends that warn.
void sampler.inputs[0].link;
return seen;
"""


def test_panels_follow_inputs_and_show_presets(browser, comfy_server, user_presets, mode):
    report = drive(browser, comfy_server, "panels", mode, prepare=BUILD_GRAPH, require_types=list(OUR_NODES),
                   workflow=os.path.join(BROWSER_DIR, "empty_workflow.json"))
    seen = report["prepared"]
    # The sampler plots the schedule of the Coefficients node it is linked to, and follows its widgets.
    assert seen["linspace"]["state"] == "ok", seen["linspace"]
    assert floats(seen["linspace"]["c_x"]) == pytest.approx([1.2, 1.15, 1.1, 1.05, 1.0], abs=1e-3)
    assert seen["linspace"]["painted"] > 500
    assert seen["mismatch"]["state"] == "warning" and "5 steps but steps is 4" in seen["mismatch"]["text"]
    assert floats(seen["list"]["c_x"]) == pytest.approx([1.3, 1.2, 1.1, 1.0], abs=1e-3)
    # Coefficient text errors in the node's own words (nodes/sampling.py), the plot cleared.
    assert seen["bad_list"]["state"] == "error" and seen["bad_list"]["painted"] == 0
    assert seen["bad_list"]["text"] == "c_x_list: entry 2 ('oops') is not a number"
    assert seen["single_value"]["text"] == "c_eps_list has 1 values but steps is 4: give one per step"
    assert seen["fixed"]["state"] == "ok" and seen["fixed"]["painted"] > 500
    # Preset metadata before running; the truncated preset is shown as invalid, with the reason.
    preset = seen["preset"]
    assert preset["state"] == "ok"
    for expected in ("tiny-sd15", "W4A8", "lcm", "4 steps", "0.250", "0.320", "+28.0%"):
        assert expected in preset["text"], (expected, preset["text"])
    assert floats(preset["c_x"]) == pytest.approx([1.1, 1.0667, 1.0333, 1.0], abs=1e-3)
    assert seen["invalid"]["state"] == "invalid" and "not valid JSON" in seen["invalid"]["text"]
    assert "fitted on W4A8-g64-r32 (simulate)" in preset["text"]
    # ... and the node's own warning (calibration/presets.py quantizer_mismatch) when the model's loader differs
    assert seen["other_quantizer"]["state"] == "warning", seen["other_quantizer"]
    assert ("preset 'tiny-sd15' was fitted on W4A8-g64-r32 (simulate backend), this model has W4A4-g64-r32 "
            "(simulate backend)") in seen["other_quantizer"]["text"]
    assert seen["same_quantizer"]["state"] == "ok", seen["same_quantizer"]
    # Every curve panel on the page is drawn where its node is (read from the canvas pixels after the page settled).
    drawn = [n for n in report["nodes"] if n["panel"] and n["panel"]["state"] in ("ok", "warning")]
    assert {n["type"] for n in drawn} == {"QSchedCoefficients", "QSchedKSampler", "QSchedLoadPreset"}
    for n in drawn:
        assert_curve_drawn(n["panel"], mode)
    [invalid] = [n for n in report["nodes"] if n["panel"] and n["panel"]["state"] == "invalid"]
    assert invalid["panel"]["pixels"]["painted"] == 0
    if frontend_version(report) >= (1, 58):  # input.link deprecated there: the collector must have seen the probe
        assert any("input.link is deprecated" in d["message"] for d in report["deprecations"]), report["deprecations"]
    keep_for_docs(mode, ("panels.png", "docs/web_panels.png"))


CALIBRATION_EVENTS = """
const { api } = window.comfyAPI.api;
const node = LiteGraph.createNode("QSchedCalibrate"); node.pos = [40, 40]; app.graph.add(node);
const id = String(node.id);
const frame = () => new Promise((r) => setTimeout(r, 200));
const read = () => ({ ...node.qschedPanel.root.dataset, text: node.qschedPanel.info.textContent });
const seen = { before: read() };
// What ComfyUI and nodes/calibrate.py send while it runs: the progress state (ComfyUI's V3 progress API: every node
// of the prompt) and one event per candidate.
api.dispatchCustomEvent("progress_state", { prompt_id: "p", nodes: {
  [id]: { value: 8, max: 24, state: "running", node_id: id, prompt_id: "p", display_node_id: id },
  "9999": { value: 3, max: 4, state: "running", node_id: "9999", prompt_id: "p", display_node_id: "9999" } } });
api.dispatchCustomEvent("qsched.calibration", { node: id, point: { c_x: [1, 1], c_eps: [1, 1], score: 0.20, prompts: 4 } });
api.dispatchCustomEvent("qsched.calibration", { node: id, point: { c_x: [1.1, 1], c_eps: [0.9, 1], score: 0.26, prompts: 4 } });
await frame();
seen.running = read();
const trace = [];
for (const x of [0.9, 1.0, 1.1]) for (const e of [0.9, 1.0, 1.1])
  trace.push({ c_x: [x, 1], c_eps: [e, 1], score: 0.2 + 0.1 * x - 0.05 * Math.abs(e - 1), full: true });
node.onExecuted({ qsched_calibration: [{ trace, best: { c_x: [1.1, 1], c_eps: [1, 1] }, best_score: 0.31,
                                          identity_score: 0.3, preset: "tiny-calibrated" }] });
await frame();
seen.finished = read();
const ctx = node.qschedPanel.canvas.getContext("2d");
const { width, height } = node.qschedPanel.canvas;
const pixels = ctx.getImageData(0, 0, width, height).data;
let painted = 0; for (let i = 3; i < pixels.length; i += 4) painted += pixels[i] > 0;
seen.painted_fraction = painted / (width * height);
return seen;
"""


def test_calibrate_panel_shows_progress_and_score_surface(browser, comfy_server, mode):
    report = drive(browser, comfy_server, "calibration_panel", mode, prepare=CALIBRATION_EVENTS,
                   require_types=["QSchedCalibrate"], workflow=os.path.join(BROWSER_DIR, "empty_workflow.json"))
    seen = report["prepared"]
    assert seen["before"]["state"] == "idle"
    running = seen["running"]
    assert running["state"] == "running" and running["candidates"] == "2" and running["done"] == "8"
    assert "images 8 / 24" in running["text"] and "best 0.260" in running["text"]
    finished = seen["finished"]
    assert finished["state"] == "finished" and finished["points"] == "9"
    assert "best 0.310" in finished["text"] and "identity 0.300" in finished["text"]
    assert "tiny-calibrated" in finished["text"]
    assert seen["painted_fraction"] > 0.3  # the 3 x 3 surface fills most of the plot
    [panel] = [n["panel"] for n in report["nodes"] if n["type"] == "QSchedCalibrate"]
    assert panel["visible"] and panel["in_vue_node"] == (mode == "vue") and panel["pixels"]["painted"] > 0.3
    keep_for_docs(mode, ("calibration_panel.png", "docs/web_calibration_panel.png"))


# Page-side helpers for building a graph: add(type, pos, widget values) and link(from, slot, to, input).
GRAPH_HELPERS = """
const LG = window.LiteGraph;
const add = (type, pos, values = {}) => {
  const n = LG.createNode(type); n.pos = pos; app.graph.add(n);
  for (const [name, v] of Object.entries(values)) n.widgets.find((w) => w.name === name).value = v;
  return n;
};
const link = (a, out, b, input) => a.connect(out, b, b.inputs.findIndex((i) => i.name === input));
"""

TXT2IMG_GRAPH = GRAPH_HELPERS + """
const checkpoint = add("CheckpointLoaderSimple", [20, 40], { ckpt_name: "%(checkpoint)s" });
const positive = add("CLIPTextEncode", [330, 20], { text: "a lighthouse on a cliff at dusk" });
const negative = add("CLIPTextEncode", [330, 250], { text: "" });
const latent = add("EmptyLatentImage", [330, 480], { width: 64, height: 64 });
const coefficients = add("QSchedCoefficients", [20, 300], { steps: 2, c_x_start: 1.1, c_eps_start: 0.95 });
const sampler = add("QSchedKSampler", [790, 20], { steps: 2, sampler_name: "lcm", scheduler: "lcm_original" });
const decode = add("VAEDecode", [1130, 20]);
const save = add("SaveImage", [1130, 130], { filename_prefix: "qsched_browser" });
link(checkpoint, 1, positive, "clip"); link(checkpoint, 1, negative, "clip");
link(checkpoint, 0, sampler, "model"); link(positive, 0, sampler, "positive"); link(negative, 0, sampler, "negative");
link(latent, 0, sampler, "latent_image"); link(coefficients, 0, sampler, "schedule");
link(sampler, 0, decode, "samples"); link(checkpoint, 2, decode, "vae"); link(decode, 0, save, "images");
return app.graph.nodes.length;
""" % {"checkpoint": SD15_CHECKPOINT}


def test_qsched_graph_runs_in_the_browser_and_shows_its_image(browser, comfy_server, mode):
    """Build checkpoint -> Q-Sched Coefficients -> Q-Sched KSampler -> SaveImage on the page, press queue."""
    report = drive(browser, comfy_server, "qsched_graph_run", mode, prepare=TXT2IMG_GRAPH, queue=True,
                   require_types=list(OUR_NODES), workflow=os.path.join(BROWSER_DIR, "empty_workflow.json"))
    assert report["prepared"] == 8
    sampler = panels(report["nodes"])["QSchedKSampler"]
    assert sampler["state"] == "ok" and floats(sampler["c_x"]) == pytest.approx([1.1, 1.0], abs=1e-3)
    assert_curve_drawn(sampler, mode)
    assert report["execution_errors"] == [], report["execution_errors"]
    [saved] = [d for d in report["executed"] if d["output"].get("images")]
    image = saved["output"]["images"][0]
    assert image["type"] == "output" and image["filename"].startswith("qsched_browser")
    shown = report["shown_images"]
    assert shown and shown[0]["width"] == 64 and image["filename"] in shown[0]["src"]
    assert os.path.isfile(os.path.join(comfy_server.output_dir, image["subfolder"], image["filename"]))
    keep_for_docs(mode, ("qsched_graph_run.png", "docs/web_qsched_graph_run.png"))


CALIBRATION_GRAPH = GRAPH_HELPERS + """
const checkpoint = add("CheckpointLoaderSimple", [20, 40], { ckpt_name: "%(checkpoint)s" });
const scorer = add("QSchedScorerLoader", [20, 260]);
scorer.widgets.find((w) => w.type === "combo" || Array.isArray(w.options?.values)).value = "%(scorer)s";
const calibrate = add("QSchedCalibrate", [380, 20], {
  sampler_name: "lcm", scheduler: "lcm_original", steps: 2, strategy: "paper_grid", budget_images: 20, seed: 3,
  prompts: "a red cube on a table\\na blue sphere on the grass\\na green field under a blue sky", width: 64, height: 64,
  preset_name: "browser-calibration" });
const preview = add("PreviewImage", [840, 20]);
link(checkpoint, 0, calibrate, "model"); link(checkpoint, 1, calibrate, "clip"); link(checkpoint, 2, calibrate, "vae");
link(scorer, 0, calibrate, "scorer"); link(calibrate, 1, preview, "images");
const loader = add("QSchedLoadPreset", [1000, 300]);
return app.graph.nodes.length;
""" % {"checkpoint": SD15_CHECKPOINT, "scorer": SCORER_FILE}


def test_real_calibration_shows_progress_and_surface_in_the_browser(browser, comfy_server):
    """A 3 x 3 paper grid on two search prompts (a third is held out) with the tiny checkpoint and a tiny random CLIP scorer, queued from
    the page: the Calibrate panel ends with the candidates, best vs identity and the 9-cell score surface,
    and Load Q-Sched Preset then lists the preset it wrote. On the classic canvas only: the panels' drawing in
    Nodes 2.0 is covered by the other tests, and this is the slowest of them."""
    if "QSchedScorerLoader" not in comfy_server.object_info():
        pytest.skip("the scorer loader node (nodes/scoring.py) is not in the pack yet")
    report = drive(browser, comfy_server, "calibration_run", prepare=CALIBRATION_GRAPH, queue=True,
                   expect_saved_image=False, done="executed.some((d) => d.output?.qsched_calibration)",
                   require_types=list(OUR_NODES), workflow=os.path.join(BROWSER_DIR, "empty_workflow.json"))
    assert report["execution_errors"] == [], report["execution_errors"]
    [summary] = [d["output"]["qsched_calibration"][0] for d in report["executed"] if "qsched_calibration" in d["output"]]
    assert summary["preset"] == "browser-calibration" and summary["images_generated"] == 18
    [panel] = [n for n in report["nodes_after"] if n["type"] == "QSchedCalibrate"]
    assert panel["state"] == "finished", panel
    assert f"best {summary['best_score']:.3f}" in panel["text"] and "identity" in panel["text"]
    # The held-out check scores the identity on the 1 held-out pair, and the winner too unless the identity won
    # (on this tiny random scorer a near tie can go either way).
    held_out_images = 1 if QSchedSchedule.from_dict(summary["best"]).is_identity else 2
    assert summary["heldout"]["images"] == held_out_images
    total = summary["images_generated"] + held_out_images
    assert f"candidates {len(summary['trace'])}" in panel["text"] and f"images {total} / {total}" in panel["text"]
    assert f"better than identity: {summary['heldout']['verdict']}" in panel["text"]
    assert os.path.isfile(os.path.join(comfy_server.user_dir, "qsched_presets", "browser-calibration.json"))
    keep_for_docs("classic", ("calibration_run.png", "docs/web_calibration_run.png"))


EXAMPLE_NAMES = sorted(f[:-5] for f in os.listdir(EXAMPLES) if f.endswith(".json")) if os.path.isdir(EXAMPLES) else []
RUN_ON_TINY_FIXTURES = ["qsched_txt2img"]  # examples whose models the harness provides: queued end to end


def check_rendered(report, name, mode):
    ours = [n for n in report["nodes"] if n["type"] in OUR_NODES]
    for n in report["nodes"]:
        assert n["registered"], f"{name}: node {n['id']} ({n['type']}) is unknown to the frontend"
    for n in ours:
        assert n["panel"] is not None and n["panel"]["visible"], f"{name}: {n['type']} has no visible Q-Sched panel"
        if n["panel"]["state"] in ("ok", "warning"):
            assert_curve_drawn(n["panel"], mode)
    return ours


def declared_models(workflow):
    """(node type, name, directory) of every properties.models entry of a UI workflow."""
    return [(n["type"], m["name"], m["directory"]) for n in workflow["nodes"]
            for m in n.get("properties", {}).get("models", [])]


def model_file_values(workflow):
    """(node type, value) of every widget value that names a model file (the frontend's missing-model scan
    looks at these: a file name with a model extension)."""
    extensions = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")
    return [(n["type"], v) for n in workflow["nodes"] if n.get("mode", 0) not in (2, 4)
            for v in (n.get("widgets_values") or []) if isinstance(v, str) and v.lower().endswith(extensions)]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_workflow_declares_its_models_and_their_folders(comfy_server, name):
    """Each model an example loads is in its node's properties.models with the folder that node reads (the
    server's /models/<folder> listing is a subset of the node's dropdown), so the frontend's missing-model
    report can say where the file goes; no entry names the tests' tiny fixtures."""
    with open(os.path.join(EXAMPLES, f"{name}.json"), encoding="utf-8") as f:
        workflow = json.load(f)
    declared = declared_models(workflow)
    assert sorted((t, v) for t, v, _ in declared) == sorted(model_file_values(workflow))
    info = comfy_server.object_info()
    for node_type, model, directory in declared:
        assert "qsched_" not in model, f"{name} names a test fixture: {model}"
        files = comfy_server.get(f"/models/{directory}")
        assert files, f"{name}: /models/{directory} is empty in the test server (no fixture to compare with)"
        inputs = {**info[node_type]["input"]["required"], **info[node_type]["input"].get("optional", {})}
        combos = [options for options in map(combo_options, inputs.values()) if options is not None]
        assert any(set(files) <= set(options) for options in combos), (name, node_type, directory, files)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_workflow_loads_with_the_extension(browser, comfy_server, name, mode):
    thumbnail = os.path.join(ARTIFACTS, f"{artifact(name, mode)}.jpg")
    report = drive(browser, comfy_server, f"load_{name}", mode, workflow=os.path.join(EXAMPLES, f"{name}.json"),
                   thumbnail=thumbnail, require_types=["KSampler"], missing_models=True)
    check_rendered(report, name, mode)
    assert os.path.getsize(thumbnail) > 2_000
    # The example's models are not in the test server. Frontends up to 1.2x open their missing-models dialog (a
    # download button per file) for the properties.models entries that carry a download url, as ours do; 1.4x
    # and later show no such dialog, and from 1.5x a notice lists the missing files with the folder each goes
    # into, taken from properties.models ("Unknown" for a custom loader without it).
    with open(os.path.join(EXAMPLES, f"{name}.json"), encoding="utf-8") as f:
        workflow = json.load(f)
    offers_download = any(m.get("url") for n in workflow["nodes"] for m in n.get("properties", {}).get("models", []))
    assert report["missing_models_dialog"] == (offers_download and frontend_version(report) < (1, 30))
    if report["missing_models_listed"]:
        for _, model, directory in declared_models(workflow):
            assert f"{model}\n{directory}\n" in report["missing_models_listed"], (model, directory)
    elif frontend_version(report) >= (1, 58):
        pytest.fail(f"frontend {report['frontend']} listed no missing models for {name}")
    keep_for_docs(mode, (f"{artifact(name, mode)}.jpg", f"example_workflows/{name}.jpg"))


# The examples name real checkpoints and 512 px: point them at the tiny fixture and 64 px, as a user would
# pick their own model in the dropdown, and keep everything else as the example has it.
FIT_TO_FIXTURES = """
let swapped = 0;
for (const n of app.graph.nodes) for (const w of n.widgets ?? []) {
  if (w.name === "ckpt_name") { w.value = "%(checkpoint)s"; swapped++; }
  if (n.type === "EmptyLatentImage" && (w.name === "width" || w.name === "height")) w.value = 64;
}
return swapped;
""" % {"checkpoint": SD15_CHECKPOINT}


@pytest.mark.parametrize("name", RUN_ON_TINY_FIXTURES)
def test_example_workflow_runs_and_shows_its_image(browser, comfy_server, name, mode):
    report = drive(browser, comfy_server, name, mode, workflow=os.path.join(EXAMPLES, f"{name}.json"), queue=True,
                   prepare=FIT_TO_FIXTURES, require_types=list(OUR_NODES))
    assert report["prepared"] >= 1, "the example loads no checkpoint the fixtures could stand in for"
    ours = check_rendered(report, name, mode)
    assert ours, f"no Q-Sched node in {name}"
    for n in ours:
        if n["type"] != "QSchedCalibrate":
            assert n["panel"]["state"] in ("ok", "warning"), n["panel"]
            assert n["panel"]["c_x"] and n["panel"]["c_eps"]
    assert report["execution_errors"] == [], report["execution_errors"]
    shown = report["shown_images"]
    assert shown and shown[0]["width"] > 0 and "type=output" in shown[0]["src"]
    assert os.path.getsize(os.path.join(ARTIFACTS, f"{artifact(name, mode)}.png")) > 10_000
    keep_for_docs(mode, (f"{name}.png", f"docs/{name}.png"))


# Coefficients inside a subgraph feeding a sampler outside it, and a sampler inside a subgraph fed from outside.
SUBGRAPH_GRAPH = GRAPH_HELPERS + """
if (typeof app.graph.convertToSubgraph !== "function") return { unsupported: window.__COMFYUI_FRONTEND_VERSION__ };
const frame = () => new Promise((r) => setTimeout(r, 400));
const set = (n, name, v) => { const w = n.widgets.find((w) => w.name === name); w.value = v; w.callback?.(v); };
const read = (n) => ({ state: n.qschedPanel.root.dataset.state, text: n.qschedPanel.info.textContent,
                       c_x: n.qschedPanel.root.dataset.cX ?? null });
const coefficients = add("QSchedCoefficients", [40, 40], { steps: 3, c_x_start: 1.2 });
const sampler = add("QSchedKSampler", [420, 40], { steps: 3 });
link(coefficients, 0, sampler, "schedule");
const packed = app.graph.convertToSubgraph(new Set([coefficients]));
await frame();
const inner = packed.subgraph.nodes.find((n) => n.comfyClass === "QSchedCoefficients");
set(inner, "c_x_start", 1.4); await frame();
const seen = { out_of_subgraph: read(sampler), subgraph_node: packed.node.type };
const outer = add("QSchedCoefficients", [40, 600], { steps: 2, c_x_start: 0.8 });
const fed = add("QSchedKSampler", [420, 600], { steps: 2 });
link(outer, 0, fed, "schedule");
const host = app.graph.convertToSubgraph(new Set([fed]));
await frame();
const insideSampler = host.subgraph.nodes.find((n) => n.comfyClass === "QSchedKSampler");
set(outer, "c_x_start", 0.7); await frame();
seen.into_subgraph = read(insideSampler);
// A second instance of that subgraph, fed by nothing: the inner panel can no longer tell which feeds it.
const twin = LiteGraph.createNode(host.subgraph.id); twin.pos = [900, 600]; app.graph.add(twin); await frame();
seen.two_instances = read(insideSampler);
return seen;
"""


def test_schedule_from_a_subgraph_resolves(browser, comfy_server, mode):
    """The sampler's panel follows its schedule out of a subgraph node (to the Coefficients node inside, and
    its edits) and, inside a subgraph, in from the node that feeds the subgraph's input."""
    report = drive(browser, comfy_server, "subgraph", mode, prepare=SUBGRAPH_GRAPH, require_types=list(OUR_NODES),
                   workflow=os.path.join(BROWSER_DIR, "empty_workflow.json"))
    seen = report["prepared"]
    if "unsupported" in seen:
        pytest.skip(f"frontend {seen['unsupported']} has no subgraphs")
    out = seen["out_of_subgraph"]
    assert out["state"] == "ok" and floats(out["c_x"]) == pytest.approx([1.4, 1.2, 1.0], abs=1e-3), out
    assert "from Q-Sched Coefficients" in out["text"]
    into = seen["into_subgraph"]
    assert into["state"] == "ok" and floats(into["c_x"]) == pytest.approx([0.7, 1.0], abs=1e-3), into
    twins = seen["two_instances"]
    assert twins["state"] == "pending" and "of 2 subgraph nodes" in twins["text"], twins
    [outside] = [n for n in report["nodes"] if n["type"] == "QSchedKSampler"]
    assert_curve_drawn(outside["panel"], mode)


def test_server_serves_the_frontend_asked_for(comfy_server):
    """The page comes from QSCHED_FRONTEND_ROOT when set, else from the frontend package ComfyUI pins."""
    root = os.environ.get("QSCHED_FRONTEND_ROOT")
    if not root:
        import comfyui_frontend_package
        root = os.path.join(os.path.dirname(comfyui_frontend_package.__file__), "static")
    with urllib.request.urlopen(comfy_server.url + "/", timeout=30) as response:
        served = response.read()
    with open(os.path.join(root, "index.html"), "rb") as f:
        assert served == f.read()
