"""Checks of quant/kernels/triton_kernels.py under Triton's interpreter, run by tests/test_quant_kernels.py in a
child process started with TRITON_INTERPRET=1 (Triton reads it when it is first imported, so the parent's own
Triton cannot be switched). Prints one JSON object: check name -> "ok" or the failure.

The references are the torch code each kernel replaces: activation codes and scales, unpacked int4 and
dequantized weights bit for bit, the weight-streaming GEMM against exact float64 products."""
import json
import os
import sys
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def row_quantizer(tk, dtype):
    from comfyui_qsched.quant.fp8 import quantize_rows
    generator = torch.Generator().manual_seed(1)
    # 37 rows from 1e-4 to 1e2 in magnitude (e4m3 subnormals, signed zeros, the 448 edge), a zero row, 2500
    # columns (two chunks and a ragged tail), padded to 48 rows as the FP8 GEMM needs
    x = (torch.randn(37, 2500, generator=generator) * torch.logspace(-4, 2, 37)[:, None]).to(dtype)
    x[3] = 0
    codes, scales = tk.quantize_rows_fp8(x, 48)
    ref_codes, ref_scales = quantize_rows(x, 48)
    assert same_bits(codes, ref_codes), "codes differ"
    assert torch.equal(scales, ref_scales), "scales differ"
    assert torch.count_nonzero(codes[37:].float()) == 0, "padding rows are not zero"


def strided_rows(tk):
    from comfyui_qsched.quant.fp8 import quantize_rows
    rows = torch.randn(20, 300, dtype=torch.bfloat16)[:, :256]  # a view: row stride 300
    codes, scales = tk.quantize_rows_fp8(rows, 32)
    ref_codes, ref_scales = quantize_rows(rows.contiguous(), 32)
    assert same_bits(codes, ref_codes) and torch.equal(scales, ref_scales)


def int4_unpack(tk):
    from comfyui_qsched.quant import numerics
    packed = torch.randint(0, 256, (24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(tk.int4_to_fp8(packed, 24, 80).float(), numerics.unpack_int4(packed, 80).float())


def dequantization(tk, bits, group, dtype):
    from comfyui_qsched.quant import numerics
    codes, scale = numerics.quantize_weight(torch.randn(24, 80), bits, group)
    packed = numerics.pack_int4(codes) if bits == 4 else codes
    assert same_bits(tk.dequantize(packed, scale, 24, 80, dtype, bits == 4),
                     numerics.dequantize_weight(codes, scale, dtype))


def streaming_gemm(tk, bits, rows):
    """Against float64 products of the same codes: bf16 rounding of the output only, no worse than the simulate
    layer (dequantize to bf16, then a float GEMM)."""
    from comfyui_qsched.quant import numerics
    generator = torch.Generator().manual_seed(bits * 100 + rows)
    codes, scale = numerics.quantize_weight(torch.randn(48, 96, generator=generator), bits)
    packed = numerics.pack_int4(codes) if bits == 4 else codes
    x = torch.randn(rows, 96, generator=generator).to(torch.bfloat16)
    bias = torch.randn(48, generator=generator).to(torch.bfloat16)
    exact = x.double() @ (codes.double() * scale.double()).t() + bias.double()
    simulate = torch.nn.functional.linear(x, numerics.dequantize_weight(codes, scale, torch.bfloat16), bias)
    out = tk.weight_only_linear(x, packed, scale, bias, bits == 4, 48)

    def error(y):
        return float((y.double() - exact).norm() / exact.norm())

    assert out.dtype == torch.bfloat16 and out.shape == (rows, 48)
    assert error(out) < 2.5e-3 and error(out) <= error(simulate) + 1e-4, (error(out), error(simulate))


def checks():
    cases = {f"row_quantizer_{str(d).split('.')[-1]}": (row_quantizer, d)
             for d in (torch.bfloat16, torch.float16, torch.float32)}
    cases["row_quantizer_strided_rows"] = (strided_rows,)
    cases["int4_unpack"] = (int4_unpack,)
    for bits, group in ((8, None), (4, None), (4, 16), (8, 20)):
        for dtype in (torch.bfloat16, torch.float32):
            cases[f"dequantize_w{bits}_g{group}_{str(dtype).split('.')[-1]}"] = (dequantization, bits, group, dtype)
    for bits in (8, 4):
        for rows in (1, 5, 16):
            cases[f"streaming_gemm_w{bits}_rows{rows}"] = (streaming_gemm, bits, rows)
    return cases


def main():
    sys.path.insert(0, ROOT)
    import qsched  # noqa: F401  registers the pack as comfyui_qsched
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    results = {}
    for name, (function, *arguments) in checks().items():
        try:
            function(tk, *arguments)
            results[name] = "ok"
        except Exception as error:  # reported per check by the parent test
            results[name] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
