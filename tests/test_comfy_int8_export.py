"""In real ComfyUI (COMFYUI_DIR): the loaders default to the auto backend, and the int8 export node writes a file that
a plain UNETLoader of ComfyUI 0.33+ loads without this pack, computing what the pack's W8A8 computes (comfy-kitchen's
eager int8_linear on the CPU); older ComfyUI gets the file and a warning that it cannot read it."""
import os

import pytest
import torch

from comfy_fixtures import SD3_UNET, TEST_DEVICE, rounding_tolerance


@pytest.fixture(scope="module")
def env(comfyui_dir, comfy_models, tmp_path_factory):
    import folder_paths
    import nodes
    for name, path in comfy_models.folders.items():
        folder_paths.add_model_folder_path(name, path)
    exports = str(tmp_path_factory.mktemp("exports"))
    folder_paths.add_model_folder_path("diffusion_models", exports, is_default=True)  # the node writes here
    from comfyui_qsched.nodes import export, loaders
    from comfyui_qsched.quant import quantize_module
    return {"nodes": nodes, "export": export, "loaders": loaders, "exports": exports, "quantize": quantize_module}


def sd3_inputs():
    generator = torch.Generator().manual_seed(3)
    return dict(x=torch.randn(1, 16, 16, 16, generator=generator), timesteps=torch.tensor([0.7]),
                context=torch.randn(1, 8, 4096, generator=generator), y=torch.randn(1, 2048, generator=generator))


def plain_load(env, name):
    return env["nodes"].UNETLoader().load_unet(name, "default")[0].model.diffusion_model


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_loaders_default_to_auto_which_picks_by_device(env):
    loader = env["loaders"].QSchedQuantizedDiffusionModelLoader
    assert loader.INPUT_TYPES()["required"]["backend"][1]["default"] == "auto"
    _, summary = loader.execute(SD3_UNET, "W8A8", "auto", "", "off").result
    assert "via auto" in summary
    if TEST_DEVICE == "cpu":
        assert "auto: simulate (cpu: exact numerics)" in summary
    else:   # the tiny model's linears are all narrower than 8-bit compute needs to pay (quant/auto.py)
        assert "GEMM too small for 8-bit compute to pay" in summary and "simulate" not in summary


def test_export_loads_in_plain_comfyui_with_the_packs_numerics(env):
    summary = env["export"].QSchedExportComfyInt8.execute(SD3_UNET, "", "tiny_sd3_int8")[0]
    path = os.path.join(env["exports"], "tiny_sd3_int8.safetensors")
    assert os.path.isfile(path) and "int8 W8A8 linear" in summary
    if not env["export"].comfy_reads_int8():  # ComfyUI before 0.33: the file is written, the user is told
        assert "this ComfyUI cannot load int8_tensorwise files" in summary
        return
    assert "cannot load" not in summary
    theirs = plain_load(env, "tiny_sd3_int8.safetensors")
    float_model = plain_load(env, SD3_UNET)
    ours = plain_load(env, SD3_UNET)
    env["quantize"](ours, "W8A8", backend="simulate")
    layer = "joint_blocks.0.x_block.attn.qkv"
    assert type(theirs.get_submodule(layer).weight).__name__ == "QuantizedTensor"  # ComfyUI's own int8 layer
    x = torch.randn(5, ours.get_submodule(layer).in_features)
    with torch.no_grad():
        dtype = next(float_model.parameters()).dtype   # what ComfyUI loaded the model in
        assert rel(theirs.get_submodule(layer)(x), ours.get_submodule(layer)(x)) < rounding_tolerance(dtype)
        inputs = {k: v.to(dtype) for k, v in sd3_inputs().items()}
        out_theirs, out_ours, out_float = (m(**inputs) for m in (theirs, ours, float_model))
    # through the whole model, float rounding flips a few int8 activation codes: far below the quantization error
    assert rel(out_theirs, out_ours) < 0.25 * rel(out_ours, out_float)


def test_export_names_bad_file_names_and_never_overwrites(env):
    node = env["export"].QSchedExportComfyInt8
    with pytest.raises(ValueError, match="letters, digits"):
        node.execute(SD3_UNET, "", "../escape")
    open(os.path.join(env["exports"], "taken.safetensors"), "wb").close()
    with pytest.raises(ValueError, match="taken.safetensors already exists"):
        node.execute(SD3_UNET, "", "taken")
    # when the prompt is queued: the name's form and the layer policy (an existing file only when it runs)
    assert "letters, digits" in node.validate_inputs("", "../escape")
    assert node.validate_inputs("", "taken") is True
    assert node.validate_inputs("blocks.*", "fine").startswith("layer_policy: layer policy rule 'blocks.*' is not")
    assert node.validate_inputs(None, None) is True  # linked inputs: checked when it runs
