"""Workflows saved with the pack's nodes (example_workflows/*.json, as the frontend saved them before the nodes moved
to ComfyUI's V3 schema) still fit the nodes the running ComfyUI serves: every node type exists, every link joins an
output and an input of its type at the slots and names the file records, and every widget value lands on a widget
input that takes it. The saved files are the reference; the other side is the server's /object_info. (Each example
also runs end to end on the tiny fixtures: tests/test_comfy_sampling_server.py, test_comfy_quant_loaders.py,
test_comfy_scoring.py, test_comfy_calibrate.py.)

The V3 checks a queued prompt goes through are exercised here too: each node's validate_inputs names what is wrong
before anything runs. Needs COMFYUI_DIR (one server per test session)."""
import glob
import json
import os

import pytest

from comfy_fixtures import (REPO_ROOT, SD15_CHECKPOINT, VIRTUAL_NODE_TYPES, PromptRejected, combo_options,
                            input_specs, is_widget, takes_control_after_generate)

EXAMPLES = sorted(glob.glob(os.path.join(REPO_ROOT, "example_workflows", "*.json")))
OUR_PREFIX = "QSched"


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fits(expected, saved):
    """A link type fits a socket type when they are equal or either is the wildcard '*'."""
    return expected == saved or "*" in (expected, saved)


def _input_type(spec):
    return "COMBO" if combo_options(spec) is not None else spec[0]


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_every_link_joins_an_output_and_an_input_of_its_type(object_info, path):
    workflow = _load(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    ours = [node for node in nodes.values() if node["type"].startswith(OUR_PREFIX)]
    assert ours, f"{os.path.basename(path)} has none of the pack's nodes"
    for node in nodes.values():
        if node["type"] in VIRTUAL_NODE_TYPES:
            continue
        assert node["type"] in object_info, f"node {node['id']}: {node['type']} is not served"
        info = object_info[node["type"]]
        inputs = dict(input_specs(info))
        for entry in node.get("inputs", []):   # sockets the file records: linked ones and unlinked optional ones
            assert entry["name"] in inputs, f"node {node['id']} ({node['type']}): no input {entry['name']!r}"
            assert _fits(_input_type(inputs[entry["name"]]), entry["type"]), (node["type"], entry)
        if node["type"].startswith(OUR_PREFIX):
            saved_outputs = [(o["name"], o["type"]) for o in node.get("outputs", [])]
            assert [t for _, t in saved_outputs] == list(info["output"]), (node["type"], saved_outputs)
    for link_id, from_id, from_slot, to_id, to_slot, link_type in workflow["links"]:
        source, target = nodes[from_id], nodes[to_id]
        if source["type"] not in VIRTUAL_NODE_TYPES:
            outputs = object_info[source["type"]]["output"]
            assert from_slot < len(outputs) and _fits(outputs[from_slot], link_type), (link_id, source["type"])
        entry = target["inputs"][to_slot]
        assert entry["link"] == link_id, f"link {link_id}: the file's input slot {to_slot} of {target['type']}"
        if target["type"] not in VIRTUAL_NODE_TYPES:
            spec = dict(input_specs(object_info[target["type"]]))[entry["name"]]
            assert _fits(_input_type(spec), link_type), (link_id, target["type"], entry["name"], spec[0])


def _value_fits(spec, value, model_files):
    """Whether a saved widget value is one the input takes (a model file the workflow names may be missing here:
    the user provides it)."""
    kind, options = _input_type(spec), (spec[1] if len(spec) > 1 else {})
    if kind == "COMBO":
        return value in combo_options(spec) or value in model_files
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind == "STRING":
        return isinstance(value, str)
    if kind == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
        return False
    if kind == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return False
    return options.get("min", value) <= value <= options.get("max", value)


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_every_widget_value_lands_on_a_widget_that_takes_it(object_info, path):
    """Widget values are stored by position: they are matched to the node's widget inputs in /object_info order, as
    the frontend does (a seed's control_after_generate takes one more value). A file saved before an optional widget
    existed has fewer values (that widget gets its default); a value beyond the last widget, or a required widget
    without a value, would mean the inputs moved."""
    workflow = _load(path)
    checked = 0
    for node in workflow["nodes"]:
        if not node["type"].startswith(OUR_PREFIX) or node.get("mode", 0) in (2, 4):
            continue
        values = list(node.get("widgets_values") or [])
        model_files = {m["name"] for m in node.get("properties", {}).get("models", [])}
        linked = {entry["name"] for entry in node.get("inputs", []) if entry.get("link") is not None}
        info = object_info[node["type"]]
        required = set(info["input"].get("required", {}))
        position = 0
        for name, spec in input_specs(info):
            if not is_widget(spec):
                continue
            if position >= len(values):
                assert name not in required, f"{node['type']}: required widget {name!r} has no saved value"
                continue
            value = values[position]
            position += 1 + takes_control_after_generate(name, spec)
            if name not in linked:
                assert _value_fits(spec, value, model_files), f"{node['type']}.{name}: saved {value!r} vs {spec}"
                checked += 1
        assert position >= len(values), f"{node['type']}: {len(values) - position} saved value(s) beyond its widgets"
    assert checked, f"{os.path.basename(path)}: no widget value of the pack's nodes checked"


def test_bad_inputs_are_node_errors_naming_the_problem_when_the_prompt_is_queued(comfy_server):
    """validate_inputs of the V3 nodes, through ComfyUI's own validation: nothing runs, each node says why."""
    loader = {"class_type": "QSchedQuantizedCheckpointLoader", "inputs": {
        "ckpt_name": SD15_CHECKPOINT, "quantization": "W8A8", "backend": "simulate", "layer_policy": "first_last=maybe",
        "cache": "off"}}
    calibrate = {"class_type": "QSchedCalibrate", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "scorer": ["scorer", 0],
        "sampler_name": "lcm", "scheduler": "lcm_original", "steps": 2, "cfg": 1.0, "strategy": "paper_grid",
        "budget_images": 0, "seed": 0, "prompts": "a\nb", "c_min": 1.0, "c_max": 1.0}}
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CHECKPOINT}},
        "scorer": {"class_type": "QSchedScorerLoader", "inputs": {}},   # never validated: calibrate fails first
        "calibrate": calibrate,
        "preset": {"class_type": "QSchedLoadPreset", "inputs": {"preset": "never-saved.json"}},
        "show_preset": {"class_type": "PreviewAny", "inputs": {"source": ["preset", 1]}},
        "loader": loader,
        "show_loader": {"class_type": "PreviewAny", "inputs": {"source": ["loader", 3]}},
        "export": {"class_type": "QSchedExportComfyInt8", "inputs": {
            "unet_name": "any.safetensors", "layer_policy": "", "filename": "../outside"}},
    }
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue_prompt(graph)
    errors = {node: " ".join(e.get("details", "") for e in entry["errors"])
              for node, entry in rejected.value.node_errors.items()}
    assert "c_min (1.0) must be below c_max (1.0)" in errors["calibrate"]
    assert "preset 'never-saved.json' is not in the preset folders" in errors["preset"]
    assert "layer_policy: first_last must be 'on' or 'off', got 'maybe'" in errors["loader"]
    assert "file name '../outside': use letters, digits" in errors["export"]
