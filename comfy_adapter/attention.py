"""The loaders' `attention` option: ComfyUI's attention replaced by the pack's 8-bit attention (quant/attention.py)
through the override ComfyUI reads from the model options, `transformer_options["optimized_attention_override"]`
(ComfyUI 0.3.64 and 0.33: every attention function is wrapped to call it as override(func, q, k, v, heads, ...)).
It lives in the ModelPatcher's options, so it follows the model through clones, LoRA, offloading and
torch.compile (the kernel is one `torch.library` op), and the quantized linears are untouched by it.

Calls the 8-bit path cannot take exactly go to ComfyUI's own function `func`: masks, grouped-query attention,
and attention a model marks as needing full precision (`low_precision_attention=False`, ComfyUI 0.33)."""
from ..quant.attention import int8_attention
from ..quant.options import ATTENTION_CHOICES

OVERRIDE_KEY = "optimized_attention_override"


def int8_attention_override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                            skip_output_reshape=False, pv_fp8=False, **kwargs):
    """pv_fp8 (bench/gpu_attention.py binds it): P.V in FP8 too, the kernel's Hopper variant."""
    if mask is not None or kwargs.get("enable_gqa", False) or kwargs.get("low_precision_attention", True) is False:
        return func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                    skip_output_reshape=skip_output_reshape, **kwargs)
    if skip_reshape:    # [B, H, N, D]
        batch, _, _, head_dim = q.shape
    else:               # [B, N, H * D]
        batch, head_dim = q.shape[0], q.shape[-1] // heads
        q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))
    out = int8_attention(q, k, v, kwargs.get("scale"), pv_fp8)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim)


def set_attention(patcher, attention):
    """Install the attention choice on a ModelPatcher ('sdpa': ComfyUI's own, as loaded)."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {attention!r}")
    if attention == "int8":
        patcher.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = int8_attention_override
