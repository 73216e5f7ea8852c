"""Checks of quant/kernels/attention_kernels.py under Triton's interpreter, run by
tests/test_quant_attention_kernels.py in a child process started with TRITON_INTERPRET=1 (Triton reads it when it
is first imported). Prints one JSON object: check name -> "ok" or the failure.

The reference is quant/attention.py: block codes and scales bit for bit, the attention within the rounding of P
to V's dtype (the interpreter truncates float32 -> bfloat16, so bfloat16 gets a wider bound than on a GPU)."""
import os
import sys

import torch

from triton_interpreted_checks import run_checks  # the shared runner (this folder is on the path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inputs(batch, heads, tokens, d, dtype, seed, layout, offset=0.0):
    """[B, H, N, D] random values: contiguous ('HND') or a transposed view of [B, N, H, D] ('NHD'), as the models
    hand them over."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, tokens, heads, d, generator=generator) * 2 + offset).to(dtype)
    return x.transpose(1, 2).contiguous() if layout == "HND" else x.transpose(1, 2)


def block_codes(ak, reference, tokens, d, dtype, layout):
    x = inputs(2, 3, tokens, d, dtype, tokens + d, layout, offset=0.5)
    for block, multiplier, mean in ((reference.BLOCK_Q, d ** -0.5, None),
                                    (reference.BLOCK_K, 1.0, reference.key_mean(x))):
        codes, scales = ak.quantize_blocks(x, block, multiplier, mean)
        ref_codes, ref_scales = reference.quantize_blocks(x, block, multiplier, mean)
        assert torch.equal(codes, ref_codes), f"codes differ at {int((codes != ref_codes).sum())} places"
        assert torch.equal(scales, ref_scales), "scales differ"


def attention(ak, reference, q_tokens, k_tokens, d, dtype, layout, bound, pv_fp8=False):
    q = inputs(1, 2, q_tokens, d, dtype, 1, layout)
    k = inputs(1, 2, k_tokens, d, dtype, 2, layout, offset=1.0)
    v = inputs(1, 2, k_tokens, d, dtype, 3, layout)
    out = ak.attention(q, k, v, d ** -0.5, pv_fp8=pv_fp8)
    ref = reference.reference(q, k, v, pv_fp8=pv_fp8)
    assert out.shape == ref.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert out.transpose(1, 2).is_contiguous(), "the output is not laid out as [B, N, H, D]"
    if pv_fp8:  # P rounds to e4m3 at the running maximum in the kernel, after normalising in the reference
        ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    error = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert error < bound, error
    if not pv_fp8:
        op = torch.ops.qsched.int8_attention(q, k, v, d ** -0.5)
        assert torch.equal(op, out), "the registered op differs from the launcher"


def checks():
    cases = {}
    for tokens, d in ((200, 64), (64, 32), (7, 128)):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for layout in ("HND", "NHD"):
                cases[f"block_codes_n{tokens}_d{d}_{str(dtype)[6:]}_{layout}"] = (block_codes, tokens, d, dtype, layout)
    for q_tokens, k_tokens, d in ((200, 77, 64), (130, 300, 32), (64, 64, 128)):
        for dtype, bound in ((torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)):
            for layout in ("HND", "NHD"):
                cases[f"attention_q{q_tokens}_k{k_tokens}_d{d}_{str(dtype)[6:]}_{layout}"] = (
                    attention, q_tokens, k_tokens, d, dtype, layout, bound)
    for q_tokens, k_tokens, d in ((200, 77, 64), (64, 300, 128)):
        cases[f"attention_pv_fp8_q{q_tokens}_k{k_tokens}_d{d}"] = (
            attention, q_tokens, k_tokens, d, torch.bfloat16, "NHD", 0.06, True)  # against float64 attention
    return cases


def main():
    sys.path.insert(0, ROOT)
    import qsched  # noqa: F401  registers the pack as comfyui_qsched
    from comfyui_qsched.quant import attention as reference
    from comfyui_qsched.quant.kernels import attention_kernels as ak
    run_checks(checks(), ak, reference)


if __name__ == "__main__":
    main()
