"""GPU run only (QSCHED_TEST_DEVICE=cuda): the loaders' `cuda_graphs: on` with real CUDA graphs. A replay must give
the eager result bit for bit: tiny SDXL UNet and FLUX DiT built from ComfyUI's classes, in BF16 and quantized
W8A8 (`auto`: FP8 or int8 GEMMs, Triton activation quantization), called as a sampler calls them (the wrapper in
transformer_options); a new input shape captures again; new weights release the graphs and capture again. Then
through the Q-Sched loader and ComfyUI's sampling, a LoRA through LoraLoaderModelOnly included; and under
DynamicVRAM (ComfyUI 0.33's default patcher through main.py), which streams the weights: eager, the same result.

Each case first checks that eager itself repeats bit for bit on this GPU (the premise of the comparison)."""
import pytest
import torch

from comfy_fixtures import SD15_CHECKPOINT
from test_comfy_quant_loaders import build_lora, env  # noqa: F401  (env: the module fixture)
from test_dynamic_vram_lora import dynamic_vram  # noqa: F401  (module fixture: the last test of this file uses it)

# bench/quant.py's tiny configs (ComfyUI's classes at small width; FLUX keeps head size 128)
SDXL_TINY = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=64, in_channels=4, model_channels=64,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 1, 1, 1, 1], channel_mult=[1, 2, 4],
                 transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=64, num_head_channels=32,
                 transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], use_temporal_attention=False,
                 use_temporal_resblock=False)
FLUX_TINY = dict(in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64, hidden_size=256, mlp_ratio=4.0,
                 num_heads=2, depth=1, depth_single_blocks=2, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                 qkv_bias=True, guidance_embed=False)
DEVICE = torch.device("cuda")


def build(name, quantization):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfyui_qsched.comfy_adapter.comfy_compat import flux_model
    from comfyui_qsched.comfy_adapter.quant_ops import with_comfy_patching
    from comfyui_qsched.quant import quantize_module
    ops = comfy.ops.disable_weight_init
    if name == "sdxl":
        model = UNetModel(**SDXL_TINY, dtype=torch.bfloat16, device=DEVICE, operations=ops)
    else:
        model = flux_model(**FLUX_TINY, dtype=torch.bfloat16, device=DEVICE, operations=ops)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype.is_floating_point:
                fan_in = tensor[0].numel() if tensor.ndim >= 2 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator, device=DEVICE) / fan_in ** 0.5)
    model = model.eval().requires_grad_(False)
    if quantization:
        report = quantize_module(model, quantization, backend="auto", device=DEVICE)
        assert report.quantized > 0
        with_comfy_patching(model)
    return model


def batch(name, seed, side=16):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    bf16 = dict(device=DEVICE, dtype=torch.bfloat16, generator=g)
    if name == "sdxl":
        return dict(x=torch.randn(2, 4, side, side, **bf16), timesteps=torch.full((2,), 500.0 + seed, device=DEVICE),
                    context=torch.randn(2, 77, 64, **bf16), y=torch.randn(2, 64, **bf16))
    return dict(x=torch.randn(1, 16, side, side, **bf16), timestep=torch.full((1,), 0.1 * seed, device=DEVICE),
                context=torch.randn(1, 32, 64, **bf16), y=torch.randn(1, 32, **bf16))


def call(model, inputs, options=None):
    with torch.inference_mode():
        return model(**inputs, transformer_options=dict(options or {}))


def eager_twice(model, inputs):
    first, second = call(model, inputs), call(model, inputs)
    assert torch.isfinite(first).all(), "the test model overflows"
    assert torch.equal(first, second), "eager does not repeat bit for bit on this GPU: nothing to compare with"
    return first


@pytest.mark.parametrize("quantization", [None, "W8A8"], ids=["bf16", "W8A8-auto"])
@pytest.mark.parametrize("name", ["sdxl", "flux"])
def test_replay_equals_eager_bit_for_bit(env, name, quantization):  # noqa: F811
    from comfyui_qsched.comfy_adapter.cuda_graphs import backbone_options
    model = build(name, quantization)
    options, wrapper = backbone_options(model)
    runner = wrapper.runner
    first, second, larger = batch(name, 1), batch(name, 2), batch(name, 3, side=24)
    eager_first, eager_second, eager_larger = (eager_twice(model, b) for b in (first, second, larger))

    assert torch.equal(call(model, first, options), eager_first)   # captured (this call's result: the warm-up)
    assert runner.counts["capture"] == 1 and runner.counts["replay"] == 0, runner.counts
    assert torch.equal(call(model, second, options), eager_second)   # replayed with new inputs
    assert torch.equal(call(model, first, options), eager_first)
    assert runner.counts["replay"] == 2 and runner.counts["capture"] == 1, runner.counts
    # a new input shape captures again; both replay afterwards
    assert torch.equal(call(model, larger, options), eager_larger)
    assert torch.equal(call(model, larger, options), eager_larger)
    assert torch.equal(call(model, second, options), eager_second)
    assert runner.counts["capture"] == 2 and runner.counts["replay"] == 4, runner.counts
    # new weights (a LoRA merged the way ComfyUI merges one: a new tensor in the layer): release, capture again
    layer = model.out[2] if name == "sdxl" else model.final_layer.linear   # the last layer: kept in BF16
    assert layer.weight.dtype == torch.bfloat16
    layer.weight = torch.nn.Parameter(layer.weight * 1.5, requires_grad=False)
    eager_new = eager_twice(model, second)
    assert not torch.equal(eager_new, eager_second)
    assert torch.equal(call(model, second, options), eager_new)
    assert torch.equal(call(model, second, options), eager_new)
    assert runner.counts["capture"] == 3 and runner.counts["replay"] == 5, runner.counts
    assert not [reason for reason in runner.counts if reason.startswith("eager")], runner.counts


def sample(env, model, clip, steps=3):  # noqa: F811
    nodes = env["nodes"]
    positive = nodes.CLIPTextEncode().encode(clip, "a red cube")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    return nodes.common_ksampler(model, 7, steps, 2.0, "euler", "normal", positive, negative, latent)[0]["samples"]


def without_graphs(patcher):
    """The same model (shared weights) without the wrapper: the eager reference."""
    from comfyui_qsched.comfy_adapter.cuda_graphs import DIFFUSION_MODEL, KEY
    clone = patcher.clone()
    clone.remove_wrappers_with_key(DIFFUSION_MODEL, KEY)
    return clone


@pytest.mark.parametrize("quantization", [None, "W8A8"], ids=["float", "W8A8-auto"])
def test_sampling_and_lora_through_the_loader(env, quantization):  # noqa: F811
    from comfyui_qsched.comfy_adapter.cuda_graphs import graphs_of, set_cuda_graphs
    nodes = env["nodes"]
    if quantization is None:
        model, clip = nodes.CheckpointLoaderSimple().load_checkpoint(SD15_CHECKPOINT)[:2]
        set_cuda_graphs(model, "on")
    else:
        loader = env["loaders"].QSchedQuantizedCheckpointLoader
        model, clip, _, summary = loader.execute(SD15_CHECKPOINT, quantization, "auto", "", "off", "sdpa", "on").result
        assert "CUDA graphs on" in summary
    runner = graphs_of(model).runner
    eager = sample(env, without_graphs(model), clip)
    assert torch.equal(sample(env, without_graphs(model), clip), eager), "eager does not repeat bit for bit"
    assert torch.equal(sample(env, model, clip), eager)
    assert runner.counts["capture"] == 1 and runner.counts["replay"] == 2, runner.counts   # cond + uncond: one call
    assert torch.equal(sample(env, model, clip), eager)   # the next run replays every step
    assert runner.counts["capture"] == 1 and runner.counts["replay"] == 5, runner.counts

    lora = nodes.LoraLoaderModelOnly().load_lora_model_only(model, build_lora(env, model), 1.0)[0]
    assert graphs_of(lora) is graphs_of(model)
    eager_lora = sample(env, without_graphs(lora), clip)
    assert not torch.equal(eager_lora, eager)
    assert torch.equal(sample(env, lora, clip), eager_lora)
    assert runner.counts["capture"] == 2 and runner.counts["replay"] == 7, runner.counts
    assert torch.equal(sample(env, model, clip), eager)   # the LoRA unpatched: the plain weights again
    assert runner.counts["capture"] == 3 and runner.counts["replay"] == 9, runner.counts
    assert not [reason for reason in runner.counts if reason.startswith("eager")], runner.counts


def test_dynamic_vram_runs_eager(env, dynamic_vram):  # noqa: F811  (last: the fixture swaps ComfyUI's patcher)
    from comfyui_qsched.comfy_adapter.cuda_graphs import graphs_of
    loader = env["loaders"].QSchedQuantizedCheckpointLoader
    model, clip, _, _ = loader.execute(SD15_CHECKPOINT, "W8A8", "auto", "", "off", "sdpa", "on").result
    assert isinstance(model, dynamic_vram)
    eager = sample(env, without_graphs(model), clip)
    assert torch.equal(sample(env, without_graphs(model), clip), eager), "eager does not repeat bit for bit"
    assert torch.equal(sample(env, model, clip), eager)
    assert graphs_of(model).runner.counts == {"eager: DynamicVRAM streams the weights": 3}
