"""The default layer policy on ComfyUI's own backbone classes (COMFYUI_DIR): no layer that quantizes its
activations sees a single row at batch 1. Such layers (time-embedding projections, adaLN modulation) gain nothing
from per-token activation quantization, and torchao's compiled int8 path (_int_mm) refuses fewer than 17 rows:
the SDXL UNet crashed there on an H100 before its ResBlock `emb_layers` were made weight-only."""
import pytest
import torch

from comfyui_qsched.quant import quantize_module
from comfyui_qsched.quant.layers import PackedWeightMixin

SDXL_LIKE = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=64, in_channels=4, model_channels=32,
                 num_res_blocks=[1, 1], transformer_depth=[0, 1], channel_mult=[1, 2], transformer_depth_middle=1,
                 transformer_depth_output=[0, 0, 1, 1], use_linear_in_transformer=True, context_dim=64,
                 num_head_channels=16, use_temporal_attention=False, use_temporal_resblock=False)
FLUX_LIKE = dict(in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64, hidden_size=64, mlp_ratio=4.0,
                 num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
                 qkv_bias=True, guidance_embed=True)


def build(kind):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfyui_qsched.comfy_adapter.comfy_compat import flux_model
    torch.manual_seed(0)
    ops = comfy.ops.manual_cast
    if kind == "sdxl":
        model = UNetModel(**SDXL_LIKE, dtype=torch.float32, device="cpu", operations=ops)
        batch = dict(x=torch.randn(1, 4, 16, 16), timesteps=torch.tensor([500.0]), context=torch.randn(1, 77, 64),
                     y=torch.randn(1, 64))
    else:
        model = flux_model(**FLUX_LIKE, dtype=torch.float32, device="cpu", operations=ops)
        batch = dict(x=torch.randn(1, 16, 16, 16), timestep=torch.tensor([0.5]), context=torch.randn(1, 8, 64),
                     y=torch.randn(1, 32), guidance=torch.tensor([3.5]))
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return model.eval(), batch


@pytest.mark.parametrize("kind", ["sdxl", "flux"])
def test_activation_quantized_layers_never_see_a_single_row(comfyui_dir, kind):
    model, batch = build(kind)
    report = quantize_module(model, "W8A8", backend="simulate")
    rows_seen = {}

    def record(name):
        def hook(module, args, _out):
            rows_seen[name] = args[0].numel() // args[0].shape[-1] if isinstance(module, torch.nn.Linear) else 2
        return hook

    activation_quantized = {name: layer for name, layer in model.named_modules()
                            if isinstance(layer, PackedWeightMixin) and not layer.quant_spec.weight_only}
    for name, layer in activation_quantized.items():
        layer.register_forward_hook(record(name))
    with torch.no_grad():
        model(**batch)
    single_row = sorted(name for name, rows in rows_seen.items() if rows == 1)
    assert not single_row, f"activation-quantized layers fed one row: {single_row}"
    weight_only = {layer.name for layer in report.layers if layer.reason == "one row per sample: weight-only"}
    assert weight_only, "the policy made no modulation/embedding projection weight-only"
    assert len(rows_seen) == len(activation_quantized) > 0
