"""The loaders' `attention: int8` option in real ComfyUI (COMFYUI_DIR): the override sits in the model options,
ComfyUI's own attention wrapper calls it (UNet layout through a KSampler run, DiT layout through ComfyUI's Flux
class with transformer_options), the 8-bit reference is what runs on the CPU, the result stays close to ComfyUI's
attention, and calls the 8-bit path cannot take go back to ComfyUI's function."""
import pytest
import torch

from comfy_fixtures import SD15_CHECKPOINT

# head size 128, as in FLUX.1
FLUX_TINY = dict(in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64, hidden_size=256, mlp_ratio=4.0,
                 num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                 qkv_bias=True, guidance_embed=False)


@pytest.fixture(scope="module")
def env(comfyui_dir, comfy_models):
    import folder_paths
    import nodes
    for name, path in comfy_models.folders.items():
        folder_paths.add_model_folder_path(name, path)
    from comfyui_qsched.nodes import loaders
    return {"nodes": nodes, "loaders": loaders, "models": comfy_models}


@pytest.fixture
def reference_calls(monkeypatch):
    """Counts the 8-bit reference's calls (what int8_attention runs on the CPU)."""
    from comfyui_qsched.quant import attention
    calls = []
    original = attention.reference

    def counted(q, k, v, scale=None, pv_fp8=False):
        calls.append(tuple(q.shape))
        return original(q, k, v, scale, pv_fp8)

    monkeypatch.setattr(attention, "reference", counted)
    return calls


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def override_of(patcher):
    return patcher.model_options.get("transformer_options", {}).get("optimized_attention_override")


def test_loader_input_is_optional_and_defaults_to_sdpa(env):
    for node in (env["loaders"].QSchedQuantizedCheckpointLoader, env["loaders"].QSchedQuantizedDiffusionModelLoader):
        inputs = [i.id for i in node.define_schema().inputs]
        attention = node.define_schema().inputs[inputs.index("attention")]
        assert inputs[inputs.index("cache") + 1] == "attention"   # the inputs before it as saved workflows have them
        assert attention.default == "sdpa" and attention.optional
        assert list(attention.options) == ["sdpa", "int8"]


def sample(env, attention):
    loader = env["loaders"].QSchedQuantizedCheckpointLoader
    model, clip, _, summary = loader.execute(SD15_CHECKPOINT, "W8A8", "simulate", "", "off", attention).result
    nodes = env["nodes"]
    positive = nodes.CLIPTextEncode().encode(clip, "a red cube")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    out = nodes.common_ksampler(model, 7, 2, 2.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    return model, summary, out


def test_int8_attention_runs_inside_comfyui_sampling(env, reference_calls):
    from comfyui_qsched.comfy_adapter.attention import int8_attention_override
    model, summary, baseline = sample(env, "sdpa")
    assert override_of(model) is None and not reference_calls and "attention" not in summary
    model, summary, out = sample(env, "int8")
    assert override_of(model) is int8_attention_override and "attention int8" in summary
    assert override_of(model.clone()) is int8_attention_override  # clones (LoRA, samplers) keep it
    # two steps, cond and uncond batched: every UNet attention layer of each model call went through it
    transformers = sum(1 for name, _ in model.model.diffusion_model.named_modules() if name.endswith(".attn1"))
    assert len(reference_calls) >= 2 * 2 * transformers > 0
    error = rel(out, baseline)
    assert 0 < error < 0.05, error


def test_int8_attention_on_comfyuis_flux(env, reference_calls):
    """FLUX hands [B, H, N, D] to the attention (skip_reshape): 128-wide heads over image and text tokens. Built
    from ComfyUI's Flux class (0.3.64's FLUX detection assumes the full width, so no tiny file loads through the
    loader there); the override reaches it through transformer_options, as the model options hand it over."""
    import comfy.ops
    from comfyui_qsched.comfy_adapter.attention import int8_attention_override
    from comfyui_qsched.comfy_adapter.comfy_compat import flux_model
    torch.manual_seed(0)
    model = flux_model(**FLUX_TINY, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    generator = torch.Generator().manual_seed(3)
    batch = dict(x=torch.randn(1, 16, 16, 16, generator=generator), timestep=torch.tensor([0.5]),
                 context=torch.randn(1, 8, 64, generator=generator), y=torch.randn(1, 32, generator=generator))
    with torch.no_grad():
        baseline = model(**batch)
        assert not reference_calls
        out = model(**batch, transformer_options={"optimized_attention_override": int8_attention_override})
    assert len(reference_calls) == 2 and all(shape[1:] == (2, 64 + 8, 128) for shape in reference_calls)
    error = rel(out, baseline)
    assert 0 < error < 0.05, error


def test_what_the_8bit_path_cannot_take_goes_to_comfyui(env, reference_calls):
    """Through ComfyUI's own attention wrapper: a mask goes to ComfyUI's function unchanged (bit for bit), the
    rest to the 8-bit attention, in both layouts."""
    from comfy.ldm.modules.attention import optimized_attention
    from comfyui_qsched.comfy_adapter.attention import int8_attention_override
    from comfyui_qsched.quant.attention import reference
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 100, 4 * 32, generator=generator) for _ in range(3))
    options = {"optimized_attention_override": int8_attention_override}
    mask = torch.zeros(2, 100, 100)
    mask[:, :, 50:] = -10.0
    assert torch.equal(optimized_attention(q, k, v, 4, mask=mask, transformer_options=options),
                       optimized_attention(q, k, v, 4, mask=mask))
    assert not reference_calls
    out = optimized_attention(q, k, v, 4, transformer_options=options)
    assert len(reference_calls) == 1
    heads = [t.unflatten(-1, (4, 32)).transpose(1, 2) for t in (q, k, v)]
    assert torch.equal(out, reference(*heads).transpose(1, 2).reshape(2, 100, 128))
    assert rel(out, optimized_attention(q, k, v, 4)) < 0.03
    out4d = optimized_attention(*heads, 4, skip_reshape=True, skip_output_reshape=True, transformer_options=options)
    assert torch.equal(out4d, reference(*heads))
