"""The shared ComfyUI harness itself: workflow conversion (no ComfyUI needed) and the headless server."""
import os
import re

import pytest

from comfy_fixtures import PromptRejected, ui_workflow_to_prompt

OBJECT_INFO = {
    "KSampler": {"input": {"required": {
        "model": ["MODEL"], "seed": ["INT", {"default": 0}], "steps": ["INT", {}], "cfg": ["FLOAT", {}],
        "sampler_name": [["euler", "lcm"]], "scheduler": [["normal"]], "positive": ["CONDITIONING"],
        "negative": ["CONDITIONING"], "latent_image": ["LATENT"], "denoise": ["FLOAT", {}]}},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                     "negative", "latent_image", "denoise"]}},
    "Loader": {"input": {"required": {"name": [["a.safetensors"]]}}},
    "Encode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}}},
}


def _node(node_id, node_type, inputs=(), widgets=None, mode=0, outputs=()):
    return {"id": node_id, "type": node_type, "mode": mode, "widgets_values": widgets or [],
            "inputs": [{"name": name, "type": "X", "link": link} for name, link in inputs],
            "outputs": [{"name": kind, "type": kind, "links": []} for kind in outputs]}


def test_ui_workflow_to_prompt_maps_widgets_links_and_seed_control():
    workflow = {
        "nodes": [
            _node(1, "Loader", widgets=["a.safetensors"]),
            _node(2, "Encode", [("clip", 1)], widgets=["a cat"]),
            _node(3, "Reroute", [("", 2)]),
            _node(4, "KSampler", [("model", 3), ("positive", 4), ("negative", 4), ("latent_image", 5),
                                  ("steps", 6)],
                  widgets=[42, "randomize", 20, 2.5, "lcm", "normal", 0.75]),
            _node(5, "PrimitiveNode", widgets=[3]),
            _node(6, "Note", widgets=["text"]),
            _node(7, "Encode", [("clip", None)], widgets=["muted"], mode=2),
        ],
        # id, from node, from slot, to node, to slot, type
        "links": [[1, 1, 1, 2, 0, "CLIP"], [2, 1, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"],
                  [4, 2, 0, 4, 1, "CONDITIONING"], [5, 1, 2, 4, 3, "LATENT"], [6, 5, 0, 4, 2, "INT"]],
    }
    prompt = ui_workflow_to_prompt(workflow, OBJECT_INFO)
    assert set(prompt) == {"1", "2", "4"}
    assert prompt["2"] == {"class_type": "Encode", "inputs": {"text": "a cat", "clip": ["1", 1]}}
    assert prompt["4"]["inputs"] == {
        "model": ["1", 0], "seed": 42, "steps": 3, "cfg": 2.5, "sampler_name": "lcm", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["1", 2], "denoise": 0.75}


def test_ui_workflow_to_prompt_passes_through_bypassed_nodes_and_drops_muted_ones():
    patch = _node(2, "Patch", [("clip", 1), ("model", 5)], widgets=[0.5], mode=4, outputs=["MODEL", "CLIP"])
    patch["inputs"][0]["type"], patch["inputs"][1]["type"] = "CLIP", "MODEL"
    workflow = {
        "nodes": [
            _node(1, "Loader", widgets=["a.safetensors"]),
            patch,  # bypassed: its CLIP output is the CLIP it receives
            _node(3, "Encode", [("clip", 2)], widgets=["after bypass"]),
            _node(4, "Encode", [("clip", 3)], widgets=["muted"], mode=2, outputs=["CONDITIONING"]),
            _node(5, "Sink", [("conditioning", 4)]),
        ],
        "links": [[1, 1, 1, 2, 0, "CLIP"], [2, 2, 1, 3, 0, "CLIP"], [3, 1, 1, 4, 0, "CLIP"],
                  [4, 4, 0, 5, 0, "CONDITIONING"], [5, 1, 0, 2, 1, "MODEL"]],
    }
    info = dict(OBJECT_INFO, Sink={"input": {"required": {"conditioning": ["CONDITIONING"]}}})
    prompt = ui_workflow_to_prompt(workflow, info)
    assert set(prompt) == {"1", "3", "5"}
    assert prompt["3"]["inputs"] == {"text": "after bypass", "clip": ["1", 1]}
    assert prompt["5"]["inputs"] == {}


def test_ui_workflow_to_prompt_names_unknown_node_types():
    with pytest.raises(KeyError, match="NotANode"):
        ui_workflow_to_prompt({"nodes": [_node(1, "NotANode")], "links": []}, OBJECT_INFO)


def _sd15_graph(steps=2, seed=1, sampler="euler"):
    from comfy_fixtures import SD15_CHECKPOINT
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 2.0, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
            "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "harness"}},
    }


def test_server_runs_the_tiny_checkpoint_and_saves_an_image(comfy_server):
    from PIL import Image
    info = comfy_server.object_info("CheckpointLoaderSimple")
    assert "qsched_tiny_sd15.safetensors" in info["input"]["required"]["ckpt_name"][0]
    history = comfy_server.run(_sd15_graph())
    images = comfy_server.output_images(history)
    assert len(images) == 1 and os.path.isfile(images[0])
    pixels = Image.open(images[0]).convert("L")
    assert pixels.size == (64, 64)
    assert pixels.getextrema()[1] > 0, "the random TAESD decoded to a black image"


def test_server_rejects_an_invalid_graph_with_node_errors(comfy_server):
    graph = _sd15_graph()
    graph["4"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue_prompt(graph)
    assert "4" in rejected.value.node_errors


def test_the_pack_loads_without_warnings_or_errors_in_the_server_log(comfy_server):
    """Everything ComfyUI logs while starting with the pack is clean: no warning, error, traceback, deprecation
    or failed import, from the pack or anything it touches."""
    assert "QSchedKSampler" in comfy_server.object_info()
    startup = comfy_server.log().split("Starting server")[0]
    assert "ComfyUI-QSched" in startup  # the import-times line: the pack was loaded from custom_nodes
    noisy = [line for line in startup.splitlines() if re.search(r"warn|error|traceback|deprecat|fail", line, re.I)]
    assert not noisy, noisy
