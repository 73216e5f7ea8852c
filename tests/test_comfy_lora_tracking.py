"""How well a LoRA merged onto a quantized model's fixed grid follows the FP model's change, in real ComfyUI
(COMFYUI_DIR), against the best any merge could do: the same LoRA applied exactly beside every quantized layer (its
float product x (up down)^T, read from the LoRA file here, added to the layer's output by a hook).

The merge (ComfyUI's LoraLoaderModelOnly, requantized onto the layer's scales, quant_ops.py) loses little against
that exact application; what limits both at 4-bit activations is the quantized model's own error (the LoRA's
change passes through every later layer's rounding), not the merge."""
import pytest
import torch
from safetensors.torch import load_file

from test_comfy_quant_loaders import build_lora, denoise, env, load, rel  # noqa: F401


def exact_deltas(env, lora):  # noqa: F811
    """{kohya key: float weight change up @ down * alpha / rank} of the LoRA file, in float64."""
    tensors = load_file(env["models"].path("loras", lora))
    deltas = {}
    for name in tensors:
        if name.endswith(".lora_down.weight"):
            key = name[:-len(".lora_down.weight")]
            down, up = tensors[name].double(), tensors[f"{key}.lora_up.weight"].double()
            deltas[key] = up @ down * (tensors[f"{key}.alpha"].item() / down.shape[0])
    return deltas


def applied_beside(env, patcher, deltas):  # noqa: F811
    """denoise() of `patcher` with each delta's product added to its layer's output."""
    handles = []
    for name, module in patcher.model.diffusion_model.named_modules():
        delta = deltas.get("lora_unet_" + name.replace(".", "_"))
        if delta is not None:
            handles.append(module.register_forward_hook(
                lambda _m, args, out, delta=delta: out + (args[0].double() @ delta.T).to(out.dtype)))
    assert len(handles) == len(deltas) > 10
    try:
        return denoise(env, patcher)
    finally:
        for handle in handles:
            handle.remove()


def tracking(change, fp_change):
    """(cosine, norm ratio) of a change to the output against the FP model's."""
    change, fp_change = change.flatten(), fp_change.flatten()
    return (torch.nn.functional.cosine_similarity(change, fp_change, dim=0).item(),
            (change.norm() / fp_change.norm()).item())


# Measured (tiny random SD1.5, CPU, 2026-12-07, ComfyUI 0.33.0), cosine merged / exact beside: W8A8 0.990 / 0.995;
# W4A8-g16 0.809 / 0.884; W4A4-g16-r4 0.380 / 0.462; W4A4-g16-ag16-r4 0.578 / 0.643; W8A4 0.452 / 0.453.
@pytest.mark.parametrize("spec", ["W8A8", "W4A8-g16", "W4A4-g16-r4"])
def test_a_merged_lora_tracks_the_fp_change_nearly_as_well_as_the_lora_applied_exactly(env, comfy_models,  # noqa: F811
                                                                                        spec):
    nodes = env["nodes"]
    fp = load(env, None)
    lora = build_lora({"models": comfy_models}, fp)
    deltas = exact_deltas({"models": comfy_models}, lora)
    fp_plain = denoise(env, fp)
    fp_change = denoise(env, nodes.LoraLoaderModelOnly().load_lora_model_only(fp, lora, 1.0)[0]) - fp_plain
    # the reference is exact: applied beside the FP model it gives ComfyUI's own merge on the FP weights
    assert rel(applied_beside(env, fp, deltas) - fp_plain, fp_change) < 1e-4
    model = load(env, spec)[0]
    plain = denoise(env, model)
    merged = tracking(denoise(env, nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora, 1.0)[0]) - plain,
                      fp_change)
    exact = tracking(applied_beside(env, model, deltas) - plain, fp_change)
    print(f"{spec}: LoRA change vs the FP model's, cosine / norm ratio: merged {merged[0]:.3f} / {merged[1]:.3f}, "
          f"applied exactly beside {exact[0]:.3f} / {exact[1]:.3f}")
    assert merged[0] > exact[0] - 0.12 and abs(merged[1] / exact[1] - 1) < 0.15, (merged, exact)
    if spec == "W8A8":
        assert merged[0] > 0.97 and exact[0] > 0.97, (merged, exact)
