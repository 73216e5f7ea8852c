"""The loaders' `cuda_graphs: on` in real ComfyUI (COMFYUI_DIR): the option reaches the model as a diffusion-model
wrapper that ComfyUI's sampling calls, on the CPU it runs eager with the no-option result bit for bit, and
ComfyUI's state decides what may replay. Those decisions are checked with the CPU stand-in of the capture
(ReplayingBackend, tests/test_cuda_graphs.py: a replay re-runs the captured call on the captured input buffers),
so the counts and the outputs follow ComfyUI's real calls: LoRA, low VRAM, model patches, another wrapper,
unloading. In the GPU run (QSCHED_TEST_DEVICE=cuda) the stand-in works on the GPU's tensors and the loader's own
graphs are real ones; real CUDA graphs against eager in more cases: tests/gpu/test_cuda_graphs_gpu.py."""
import pytest
import torch

from comfy_fixtures import SD15_CHECKPOINT, TEST_DEVICE
from test_comfy_quant_loaders import build_lora
from test_cuda_graphs import ReplayingBackend

FLUX_TINY = dict(in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64, hidden_size=256, mlp_ratio=4.0,
                 num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                 qkv_bias=True, guidance_embed=False)


@pytest.fixture(scope="module")
def env(comfyui_dir, comfy_models):
    import comfy.model_management
    import folder_paths
    import nodes
    for name, path in comfy_models.folders.items():
        folder_paths.add_model_folder_path(name, path)
    from comfyui_qsched.comfy_adapter import cuda_graphs
    from comfyui_qsched.nodes import loaders
    return {"nodes": nodes, "loaders": loaders, "mm": comfy.model_management, "models": comfy_models,
            "cg": cuda_graphs}


def load(env, cuda_graphs="off", backend="simulate"):
    loader = env["loaders"].QSchedQuantizedCheckpointLoader
    return loader.execute(SD15_CHECKPOINT, "W8A8", backend, "", "off", "sdpa", cuda_graphs).result


def sample(env, model, clip, steps=3, side=16):
    nodes = env["nodes"]
    positive = nodes.CLIPTextEncode().encode(clip, "a red cube")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, side, side)}
    return nodes.common_ksampler(model, 7, steps, 2.0, "euler", "normal", positive, negative, latent)[0]["samples"]


def stand_in(env, model):
    """The model's graphs with the CPU stand-in of the capture (the loader installed torch.cuda's)."""
    wrapper = env["cg"].set_cuda_graphs(model, "on", backend=ReplayingBackend(device_type=TEST_DEVICE))
    return wrapper.runner, wrapper.runner.backend


def test_loader_input_is_last_optional_and_defaults_to_off(env):
    for node in (env["loaders"].QSchedQuantizedCheckpointLoader, env["loaders"].QSchedQuantizedDiffusionModelLoader):
        last = node.define_schema().inputs[-1]
        assert last.id == "cuda_graphs" and last.default == "off" and last.optional
        assert list(last.options) == ["off", "on"]


def test_option_reaches_the_model_and_runs_eager_on_the_cpu(env):
    """On the CPU every call runs eager; in the GPU run the same sampling captures once and replays."""
    model, clip, _, summary = load(env, "on")
    wrapper = env["cg"].graphs_of(model)
    assert isinstance(wrapper, env["cg"].GraphedDiffusionModel) and "CUDA graphs on" in summary
    assert env["cg"].graphs_of(model.clone()) is wrapper   # clones (LoRA, sampler nodes) share it
    baseline_model, _, _, baseline_summary = load(env, "off")
    assert env["cg"].graphs_of(baseline_model) is None and "CUDA graphs" not in baseline_summary
    out = sample(env, model, clip)
    assert torch.equal(out, sample(env, baseline_model, clip))
    # cond and uncond batched: one call per step
    expected = {"eager: inputs on cpu": 3} if TEST_DEVICE == "cpu" else {"capture": 1, "replay": 2}
    assert wrapper.runner.counts == expected


def test_sampling_captures_once_and_replays_the_other_steps(env):
    model, clip, _, _ = load(env)
    eager, eager_large = sample(env, model, clip, steps=4), sample(env, model, clip, steps=2, side=24)
    runner, backend = stand_in(env, model)
    assert torch.equal(sample(env, model, clip, steps=4), eager)
    assert backend.captures == 1 and runner.counts["replay"] == 3
    # another latent size is another graph; the first one still replays, in the next run too
    assert torch.equal(sample(env, model, clip, steps=2, side=24), eager_large)
    assert backend.captures == 2 and runner.counts["replay"] == 4
    assert torch.equal(sample(env, model, clip, steps=4), eager)
    assert backend.captures == 2 and runner.counts["replay"] == 8


def test_a_lora_captures_again_with_its_weights(env):
    nodes = env["nodes"]
    model, clip, _, _ = load(env)
    reference = load(env)[0]
    lora = build_lora(env, model)
    runner, backend = stand_in(env, model)
    with_lora = nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora, 1.0)[0]
    eager_lora = sample(env, nodes.LoraLoaderModelOnly().load_lora_model_only(reference, lora, 1.0)[0], clip)
    eager_plain = sample(env, reference, clip)
    assert not torch.equal(eager_lora, eager_plain)
    assert torch.equal(sample(env, model, clip), eager_plain)
    assert (backend.captures, backend.resets, runner.counts["replay"]) == (1, 0, 2)
    assert torch.equal(sample(env, with_lora, clip), eager_lora)
    assert (backend.captures, backend.resets, runner.counts["replay"]) == (2, 1, 4)
    assert torch.equal(sample(env, model, clip), eager_plain)   # the LoRA unpatched: back to the plain weights
    assert (backend.captures, backend.resets, runner.counts["replay"]) == (3, 2, 6)


def test_low_vram_runs_eager_and_releases_the_graphs(env):
    model, clip, _, _ = load(env)
    runner, backend = stand_in(env, model)
    sample(env, model, clip, steps=2)
    assert backend.captures == 1 and backend.resets == 0
    device = env["mm"].get_torch_device()
    env["mm"].unload_all_models()
    assert backend.resets == 1, "unloading the model releases its graphs"
    model.load(device, lowvram_model_memory=1, force_patch_weights=False)   # every layer cast per call
    x, context, sigma = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 768), torch.tensor([1.0])
    x, context, sigma = x.to(device), context.to(device), sigma.to(device)
    options = {"wrappers": model.wrappers}   # what sampling hands the backbone
    with torch.no_grad():
        out = model.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)
        eager = model.model.apply_model(x, sigma, c_crossattn=context)
    model.unpatch_model()
    assert torch.equal(out, eager)
    assert runner.counts["eager: weights partly offloaded (low VRAM)"] == 1 and backend.captures == 1


def test_model_patches_and_other_wrappers_run_eager(env):
    import comfy.patcher_extension
    model, clip, _, _ = load(env)
    eager = sample(env, model, clip, steps=2)
    runner, backend = stand_in(env, model)
    patched = model.clone()
    patched.set_model_attn1_patch(lambda q, k, v, extra_options: (q, k, v))
    assert torch.equal(sample(env, patched, clip, steps=2), eager)
    assert runner.counts["eager: model patches"] == 2
    wrapped = model.clone()
    wrapped.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "other",
                                 lambda executor, *args, **kwargs: executor(*args, **kwargs))
    assert torch.equal(sample(env, wrapped, clip, steps=2), eager)
    assert runner.counts["eager: another diffusion-model wrapper (e.g. torch.compile)"] == 2
    assert backend.warmups == 0


def test_flux_backbone_through_the_wrapper(env):
    """FLUX's forward takes (x, timestep, context, y, guidance, ref_latents, control, transformer_options): the
    wrapper finds the options last, keeps the sigmas as graph inputs and the int8 attention override in the key."""
    import comfy.ops
    from comfyui_qsched.comfy_adapter.attention import OVERRIDE_KEY, int8_attention_override
    from comfyui_qsched.comfy_adapter.comfy_compat import flux_model
    torch.manual_seed(0)
    model = flux_model(**FLUX_TINY, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    options, wrapper = env["cg"].backbone_options(model, ReplayingBackend())

    def batch(seed):
        generator = torch.Generator().manual_seed(seed)
        return dict(x=torch.randn(1, 16, 16, 16, generator=generator), timestep=torch.rand(1, generator=generator),
                    context=torch.randn(1, 8, 64, generator=generator), y=torch.randn(1, 32, generator=generator))

    with torch.no_grad():
        for seed in (1, 2, 3):
            sigmas = torch.rand(1)
            out = model(**batch(seed), transformer_options={**options, "sigmas": sigmas})
            assert torch.equal(out, model(**batch(seed), transformer_options={"sigmas": sigmas}))
        int8 = {**options, OVERRIDE_KEY: int8_attention_override}
        out = model(**batch(4), transformer_options=int8)
        assert torch.equal(out, model(**batch(4), transformer_options={OVERRIDE_KEY: int8_attention_override}))
    assert wrapper.runner.backend.captures == 2 and wrapper.runner.counts["replay"] == 2
