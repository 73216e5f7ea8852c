"""The sampling nodes in a real headless ComfyUI: /object_info, the example workflow, parity through saved
images, interrupt, and clean node errors. Needs COMFYUI_DIR (one server per test session)."""
import time

import numpy as np
import pytest
from PIL import Image

from comfy_fixtures import (CLIP_L, SD3_UNET, SD15_CHECKPOINT, PromptFailed, PromptRejected, combo_options,
                            load_example_workflow, ui_workflow_to_prompt)

OUR_NODES = {"QSchedKSampler": "Q-Sched KSampler", "QSchedSampler": "Q-Sched Sampler",
             "QSchedCoefficients": "Q-Sched Coefficients", "QSchedFewStepSigmas": "Q-Sched Few-Step Sigmas"}


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _sd15_base(prompt="a red cube"):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CHECKPOINT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def _sd3_base():
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": SD3_UNET, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L, "type": "sd3"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["clip", 0]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["clip", 0]}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def _branch(graph, name, sampler_class, model, vae, steps=2, sampler="euler", scheduler="normal", schedule=None,
            cfg=2.0, seed=3):
    inputs = {"model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
              "scheduler": scheduler, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
              "denoise": 1.0}
    if schedule is not None:
        inputs["schedule"] = schedule
    graph[f"{name}_sample"] = {"class_type": sampler_class, "inputs": inputs}
    graph[f"{name}_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{name}_sample", 0], "vae": vae}}
    graph[f"{name}_save"] = {"class_type": "SaveImage", "inputs": {"images": [f"{name}_decode", 0],
                                                                  "filename_prefix": f"qsched_test_{name}"}}
    return f"{name}_save"


def _coefficients(steps, mode="linspace", c_x=1.0, c_eps=1.0, c_x_list="", c_eps_list=""):
    return {"class_type": "QSchedCoefficients", "inputs": {
        "steps": steps, "mode": mode, "c_x_start": c_x, "c_eps_start": c_eps, "c_x_end": 1.0, "c_eps_end": 1.0,
        "c_x_list": c_x_list, "c_eps_list": c_eps_list}}


def test_object_info_lists_our_nodes_with_tooltips(comfy_server):
    info = comfy_server.object_info()
    for node_id, display_name in OUR_NODES.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        entry = info[node_id]
        assert entry["display_name"] == display_name and entry["category"] == "qsched/sampling"
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    ksampler = info["QSchedKSampler"]["input"]
    assert combo_options(ksampler["required"]["sampler_name"]) == ["lcm", "tcd", "euler", "euler_ancestral"]
    schedulers = combo_options(ksampler["required"]["scheduler"])
    assert {"normal", "sgm_uniform", "lcm_original", "turbo_trailing", "flow_shift1"} <= set(schedulers)
    assert ksampler["optional"]["schedule"][0] == "QSCHED_SCHEDULE"
    assert info["QSchedSampler"]["output"] == ["SAMPLER"]
    assert info["QSchedCoefficients"]["output"] == ["QSCHED_SCHEDULE"]
    assert info["QSchedFewStepSigmas"]["output"] == ["SIGMAS"]


def test_example_workflow_produces_a_saved_image(comfy_server):
    prompt = ui_workflow_to_prompt(load_example_workflow("qsched_txt2img"), comfy_server.object_info())
    by_class = {node["class_type"]: node for node in prompt.values()}
    assert by_class["QSchedKSampler"]["inputs"]["schedule"] == ["6", 0]
    assert by_class["QSchedKSampler"]["inputs"]["scheduler"] == "turbo_trailing"
    by_class["CheckpointLoaderSimple"]["inputs"]["ckpt_name"] = SD15_CHECKPOINT  # the tiny stand-in model
    by_class["EmptyLatentImage"]["inputs"].update(width=64, height=64)
    history = comfy_server.run(prompt)
    images = comfy_server.output_images(history)
    assert len(images) == 1
    pixels = _pixels(images[0])
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1


def test_identity_output_equals_native_ksampler_and_coefficients_change_it(comfy_server):
    """Saved PNGs: Q-Sched KSampler without a schedule == native KSampler (SD1.5 euler_ancestral, SD3 euler)."""
    graph = _sd15_base()
    native = _branch(graph, "native", "KSampler", ["ckpt", 0], ["ckpt", 2], sampler="euler_ancestral")
    ours = _branch(graph, "ours", "QSchedKSampler", ["ckpt", 0], ["ckpt", 2], sampler="euler_ancestral")
    graph["coeffs"] = _coefficients(2, c_x=1.2, c_eps=0.9)
    scaled = _branch(graph, "scaled", "QSchedKSampler", ["ckpt", 0], ["ckpt", 2], sampler="euler_ancestral",
                     schedule=["coeffs", 0])
    history = comfy_server.run(graph)
    images = {name: _pixels(comfy_server.output_images(history, name)[0]) for name in (native, ours, scaled)}
    assert np.array_equal(images[native], images[ours])
    assert not np.array_equal(images[native], images[scaled])

    flow = _sd3_base()
    native = _branch(flow, "native", "KSampler", ["unet", 0], ["vae", 0], scheduler="simple")
    ours = _branch(flow, "ours", "QSchedKSampler", ["unet", 0], ["vae", 0], scheduler="simple")
    history = comfy_server.run(flow)
    assert np.array_equal(_pixels(comfy_server.output_images(history, native)[0]),
                          _pixels(comfy_server.output_images(history, ours)[0]))


def test_qsched_sampler_and_few_step_sigmas_in_sampler_custom(comfy_server):
    graph = _sd15_base()
    graph["coeffs"] = _coefficients(4, c_x=1.05, c_eps=0.95)
    graph["sampler"] = {"class_type": "QSchedSampler", "inputs": {"sampler_name": "tcd", "schedule": ["coeffs", 0],
                                                                  "tcd_gamma": 0.3}}
    graph["sigmas"] = {"class_type": "QSchedFewStepSigmas", "inputs": {
        "model": ["ckpt", 0], "scheduler": "lcm_original", "steps": 4, "denoise": 1.0}}
    graph["sample"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["ckpt", 0], "add_noise": True, "noise_seed": 1, "cfg": 1.0, "positive": ["pos", 0],
        "negative": ["neg", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    graph["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "qsched_sc"}}
    images = comfy_server.output_images(comfy_server.run(graph))
    assert len(images) == 1 and _pixels(images[0]).shape == (64, 64, 3)


def test_a_list_of_the_wrong_length_is_rejected_when_queued(comfy_server):
    graph = _sd15_base()
    graph["coeffs"] = _coefficients(4, mode="list", c_x_list="1.1, 1.0, 1.0", c_eps_list="1, 1, 1, 1")
    _branch(graph, "ours", "QSchedKSampler", ["ckpt", 0], ["ckpt", 2], steps=4, schedule=["coeffs", 0])
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue_prompt(graph)
    assert "coeffs" in rejected.value.node_errors
    details = " ".join(e.get("details", "") for e in rejected.value.node_errors["coeffs"]["errors"])
    assert "c_x_list has 3 values but steps is 4" in details


def test_a_schedule_that_does_not_fit_the_steps_is_a_node_error(comfy_server):
    graph = _sd15_base()
    graph["coeffs"] = _coefficients(4, c_x=1.1)
    save = _branch(graph, "ours", "QSchedKSampler", ["ckpt", 0], ["ckpt", 2], steps=2, schedule=["coeffs", 0])
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(graph)
    error = failed.value
    assert error.kind == "execution_error" and error.details["node_type"] == "QSchedKSampler"
    assert "schedule has 4 coefficient pairs but sampling runs 2 steps" in error.details["exception_message"]
    assert comfy_server.output_images(error.history, save) == []


def test_interrupt_stops_a_long_run_within_a_step(comfy_server):
    graph = _sd15_base()
    save = _branch(graph, "long", "QSchedKSampler", ["ckpt", 0], ["ckpt", 2], steps=500, seed=11)
    prompt_id = comfy_server.queue_prompt(graph)
    comfy_server.wait_until_running(prompt_id)
    time.sleep(1.0)
    started = time.monotonic()
    comfy_server.interrupt()
    with pytest.raises(PromptFailed) as failed:
        comfy_server.wait_for(prompt_id, timeout=60)
    assert failed.value.kind == "execution_interrupted"
    assert time.monotonic() - started < 30
    assert comfy_server.output_images(failed.value.history, save) == []
