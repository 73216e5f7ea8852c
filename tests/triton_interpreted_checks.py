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


def dequantization(tk, bits, group, dtype, scale_dtype=None):
    """scale_dtype: the scales widened to it (float32 group scales, as a cache from before float16 ones holds)."""
    from comfyui_qsched.quant import numerics
    codes, scale = numerics.quantize_weight(torch.randn(24, 80), bits, group)
    assert scale.dtype == (torch.float16 if group else torch.float32)
    scale = scale if scale_dtype is None else scale.to(scale_dtype)
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


def act_quantizer(tk, int8_codes, dtype, block_m):
    """The fused kernel without a branch: the torch definitions bit for bit (int8 and e4m3), padding rows zero."""
    from comfyui_qsched.quant import fp8, int8
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(37, 300, generator=generator) * torch.logspace(-4, 2, 37)[:, None]).to(dtype)
    x[5] = 0
    codes, scales, xd = tk.quantize_act(x, 48, int8_codes, block_m=block_m)
    ref_codes, ref_scales = (int8.quantize_rows if int8_codes else fp8.quantize_rows)(x, 48)
    assert xd is None and same_bits(codes, ref_codes), "codes differ"
    assert torch.equal(scales, ref_scales), "scales differ"
    assert torch.count_nonzero(codes[37:].float()) == 0, "padding rows are not zero"


def fused_down_projection(tk, int8_codes, rank, fold):
    """Codes and scales as without the branch; x @ down^T against float64 (bf16 output rounding), or with `fold` its
    codes on the row's scale in the extra columns (against the same rounding of the float64 product, up to one
    code where the summation order moves a value across a rounding boundary)."""
    from comfyui_qsched.quant import fp8, int8
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(21, 200, generator=generator).to(torch.bfloat16)
    down = (torch.randn(rank, 200, generator=generator) / 200 ** 0.5).to(torch.bfloat16)
    if rank == 24:  # a transposed layout, as an SVD's factor comes
        down = down.t().contiguous().t()
    codes, scales, xd = tk.quantize_act(x, 32, int8_codes, down=down, fold=fold)
    ref_codes, ref_scales = (int8.quantize_rows if int8_codes else fp8.quantize_rows)(x, 32)
    assert same_bits(codes[:, :200].contiguous(), ref_codes) and torch.equal(scales, ref_scales)
    exact = x.double() @ down.double().t()
    if not fold:
        assert xd.dtype == torch.bfloat16 and xd.shape == (21, rank)
        assert float((xd.double() - exact).norm() / exact.norm()) < 4e-3
        return
    assert codes.shape == (32, 200 + rank) and torch.count_nonzero(codes[21:].float()) == 0
    scaled = exact / ref_scales[:21].double()
    limit = 127 if int8_codes else 448
    expected = scaled.clamp(-limit, limit).round() if int8_codes else scaled.float().clamp(-limit, limit).to(
        fp8.E4M3).double()
    got = codes[:21, 200:].double()
    step = 1.0 if int8_codes else expected.abs() / 8 + 2 ** -9
    assert bool(((got - expected).abs() <= step + 1e-12).all())


def split_fold_activations(tk, rank, dtype):
    """The split fold's A side (`split=`): the codes and scales of the plain e4m3 quantizer, then a_hi, a_hi, a_lo of
    xd * (1 / scale) and zeros to the tail's width, bit for bit against branch_ops.split_activation_tail; padding
    rows zero; values past 448 (hi saturates, lo keeps the excess) included."""
    from comfyui_qsched.quant import branch_ops, fp8
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(21, 200, generator=generator).to(dtype)
    xd = (torch.randn(21, rank, generator=generator) * 30).to(dtype)
    xd[3, 0] = 3000.0  # past 448 on the row's scale
    tail = branch_ops.split_columns(rank)
    codes, scales, none = tk.quantize_act(x, 32, False, split=xd, tail=tail)
    ref_codes, ref_scales = fp8.quantize_rows(x, 32)
    assert none is None and codes.shape == (32, 200 + tail)
    assert same_bits(codes[:, :200].contiguous(), ref_codes) and torch.equal(scales, ref_scales)
    expected = branch_ops.split_activation_tail(xd, ref_scales, 32)
    assert same_bits(codes[:, 200:].contiguous(), expected), "split columns differ"
    assert float(expected[3, 0].float()) == 448.0 and float(expected[3, 2 * rank].float()) > 0


def split_fold_fast_path(tk, spec, down_form="cublas"):
    """branch_ops.split_fast (the kernels, the wide weight, one FP8 GEMM) equals the split fold's torch definition
    bit for bit on a W4A8 fp8 layer with a rank-8 branch, per channel and group-wise (e4m3 form); the same GEMM
    runs both here, so any difference is in the codes or the weight. With the down-projection in the quantization
    kernel (SPLIT_DOWN "fused") its float32 sums differ in order: within 2**-8 of the definition's output."""
    from torch import nn
    from comfyui_qsched.quant import branch_ops, quantize_module
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(128, 96)).requires_grad_(False)
    quantize_module(model, spec, backend="fp8", policy="first_last=off")
    layer = model[0].to(torch.bfloat16)
    layer.weight_scale = layer.weight_scale.float() if "g" not in spec else layer.weight_scale.half()
    x = torch.randn(2, 7, 128).to(torch.bfloat16)
    ratio, channel, down, tail, bound = branch_ops.split_factors(layer.lowrank_down, layer.lowrank_up,
                                                                 layer.weight_scale, x.dtype)
    assert bound <= branch_ops.SPLIT_BOUND_MAX and (ratio is None) == ("g" not in spec)
    saved, branch_ops.SPLIT_DOWN = branch_ops.SPLIT_DOWN, down_form
    try:
        fast = branch_ops.split_fast(x, layer.weight, ratio, channel, layer.bias, 96, down, tail)
    finally:
        branch_ops.SPLIT_DOWN = saved
    expected = branch_ops.split_branch_forward(layer, x, layer.weight, layer.bias)  # CPU tensors: the definition
    if down_form == "cublas":
        assert same_bits(fast, expected)
    else:
        assert float((fast.double() - expected.double()).norm() / expected.double().norm()) < 2 ** -8


def split_fold_fused_down(tk, rank, dtype):
    """The split fold's A side with the down-projection inside the quantization kernel (split=True with `down`):
    x's codes and scales bit for bit, no xd output, and the split columns those of split_activation_tail on the
    float64 product rounded to x's dtype, up to one e4m3 step of hi (the kernel's float32 sums in another order can
    move xd by one unit of x's dtype) and lo."""
    from comfyui_qsched.quant import branch_ops, fp8
    generator = torch.Generator().manual_seed(rank + 1)
    x = torch.randn(21, 200, generator=generator).to(dtype)
    down = (torch.randn(rank, 200, generator=generator) / 200 ** 0.5).to(dtype)  # a within +-896
    tail = branch_ops.split_columns(rank)
    codes, scales, none = tk.quantize_act(x, 32, False, down=down, split=True, tail=tail)
    ref_codes, ref_scales = fp8.quantize_rows(x, 32)
    assert none is None and codes.shape == (32, 200 + tail)
    assert same_bits(codes[:, :200].contiguous(), ref_codes) and torch.equal(scales, ref_scales)
    xd = (x.double() @ down.double().t()).to(dtype)
    expected = branch_ops.split_activation_tail(xd, ref_scales, 32).double()
    got = codes[:, 200:].double()
    hi_step = expected[:, :rank].abs() / 8 + 2 ** -9
    assert bool(((got[:, :rank] - expected[:, :rank]).abs() <= hi_step).all())
    a = xd.double() / ref_scales.double()[:21]
    assert float(a.abs().max()) < 896
    for columns in (got, expected):  # hi + lo: a to ~7 bits either way
        total = columns[:21, :rank] + columns[:21, 2 * rank:3 * rank]
        assert float((total - a).norm() / a.norm()) < 2 ** -7
    assert torch.count_nonzero(codes[21:].float()) == 0


def int4_groups_into_wider_buffer(tk):
    """The group-wise e4m3 unpacking into the split fold's wider buffer: the same bits in the first columns, the
    columns after them untouched."""
    from comfyui_qsched.quant import linear_ops, numerics
    generator = torch.Generator().manual_seed(7)
    codes, scale = numerics.quantize_weight(torch.randn(24, 128, generator=generator), 4, 64)
    packed = numerics.pack_int4(codes)
    ratio, _ = linear_ops.group_ratios(scale.half())
    out = torch.full((24, 160), 2.0).to(torch.float8_e4m3fn)
    tk.int4_groups_e4m3(packed, ratio, 24, 128, out=out)
    assert same_bits(out[:, :128].contiguous(), tk.int4_groups_e4m3(packed, ratio, 24, 128))
    assert bool((out[:, 128:].float() == 2.0).all()), "columns past the weight were written"
    tail = torch.randn(24, 20, generator=generator).to(torch.float8_e4m3fn)  # copied after the weight, in one launch
    tk.int4_groups_e4m3(packed, ratio, 24, 128, out=out, tail=tail)
    assert same_bits(out[:, 128:148].contiguous(), tail) and bool((out[:, 148:].float() == 2.0).all())
    per_channel = torch.full((24, 160), 2.0).to(torch.float8_e4m3fn)
    tk.int4_unpack(packed, 24, 128, torch.float8_e4m3fn, out=per_channel, tail=tail)
    assert torch.equal(per_channel[:, :128].float(), numerics.unpack_int4(packed, 128).float())
    assert same_bits(per_channel[:, 128:148].contiguous(), tail) and bool((per_channel[:, 148:].float() == 2.0).all())


def int4_unpacking(tk, dtype, width):
    """Packed int4 -> int8 / e4m3 codes, exact, into a buffer wider than the weight (the fold's layout)."""
    from comfyui_qsched.quant import numerics
    packed = torch.randint(0, 256, (24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    out = torch.full((24, width), 3, dtype=torch.int8).to(dtype)
    tk.int4_unpack(packed, 24, 80, dtype, out=out)
    assert torch.equal(out[:, :80].float(), numerics.unpack_int4(packed, 80).float())
    assert bool((out[:, 80:].float() == 3).all()), "columns past the weight were written"


def int4_groups_to_e4m3(tk, group):
    """Group-wise packed int4 -> e4m3(code * s_g / s_c) (linear_ops GROUP_GEMM "e4m3") equals its torch definition
    bit for bit, float16 group scales with a zero row and groups far apart."""
    from comfyui_qsched.quant import linear_ops, numerics
    generator = torch.Generator().manual_seed(6)
    w = torch.randn(24, 128, generator=generator)
    w[:, 5] *= 30
    w[3] = 0
    codes, scale = numerics.quantize_weight(w, 4, group)
    packed = numerics.pack_int4(codes)
    ratio, _ = linear_ops.group_ratios(scale.half())
    got = tk.int4_groups_e4m3(packed, ratio, 24, 128)
    expected, _ = linear_ops.group_e4m3_reference(packed, scale.half(), 24, 128)
    assert same_bits(got, expected)


def int8_epilogue(tk, dtype, with_bias):
    from comfyui_qsched.quant import int8
    generator = torch.Generator().manual_seed(5)
    acc = torch.randint(-2 ** 20, 2 ** 20, (40, 136), dtype=torch.int32, generator=generator)
    sx = torch.rand(40, 1, generator=generator) / 100
    sw = torch.rand(136, 1, generator=generator) / 100
    bias = torch.randn(136, generator=generator).to(dtype) if with_bias else None
    out = tk.int8_epilogue(acc, sx, sw, bias, 37, dtype)
    assert same_bits(out, int8.scale_int32(acc, sx, sw, bias, 37, dtype))


def simulate_linear(tk, spec, dtype):
    """The simulate backend's linear with its weight widened by the Triton kernel (quant/fast.py, taken on CUDA
    inputs: here the interpreter stands in) against the same layer's torch path, bit for bit."""
    from comfyui_qsched.quant import kernels, layers, quantize_module
    generator = torch.Generator().manual_seed(9)
    model = torch.nn.Sequential(torch.nn.Linear(96, 48))
    report = quantize_module(model, spec, backend="simulate", policy="first_last=off")
    assert report.quantized == 1, report
    layer = model[0].to(dtype)
    x = torch.randn(3, 7, 96, generator=generator).to(dtype)
    torch_path = layers.SimulatedLinear.quantized_forward(layer, x, layer.weight, layer.bias)
    saved = kernels.runs_triton
    kernels.runs_triton = lambda tensor: True
    try:
        fast = layer(x)
    finally:
        kernels.runs_triton = saved
    assert same_bits(fast, torch_path), "fast simulate differs from the torch path"


def checks():
    cases = {f"row_quantizer_{str(d).split('.')[-1]}": (row_quantizer, d)
             for d in (torch.bfloat16, torch.float16, torch.float32)}
    cases["row_quantizer_strided_rows"] = (strided_rows,)
    cases["int4_unpack"] = (int4_unpack,)
    for bits, group in ((8, None), (4, None), (4, 16), (8, 20)):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            cases[f"dequantize_w{bits}_g{group}_{str(dtype).split('.')[-1]}"] = (dequantization, bits, group, dtype)
    for dtype in (torch.bfloat16, torch.float16):
        cases[f"dequantize_w4_g16_{str(dtype).split('.')[-1]}_float32_scales"] = (dequantization, 4, 16, dtype,
                                                                                 torch.float32)
    for int8_codes in (True, False):
        kind = "int8" if int8_codes else "fp8"
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            cases[f"act_quantizer_{kind}_{str(dtype).split('.')[-1]}"] = (act_quantizer, int8_codes, dtype, 1)
        cases[f"act_quantizer_{kind}_16_rows_per_program"] = (act_quantizer, int8_codes, torch.bfloat16, 16)
        for rank in (16, 24):
            for fold in (False, True):
                cases[f"fused_down_{kind}_rank{rank}_{'fold' if fold else 'xd'}"] = (fused_down_projection, int8_codes,
                                                                                   rank, fold)
    for rank in (8, 32):
        for dtype in (torch.bfloat16, torch.float16):
            cases[f"split_fold_activations_rank{rank}_{str(dtype).split('.')[-1]}"] = (split_fold_activations, rank,
                                                                                      dtype)
    cases["int4_groups_into_wider_buffer"] = (int4_groups_into_wider_buffer,)
    for rank in (8, 32):
        cases[f"split_fold_fused_down_rank{rank}"] = (split_fold_fused_down, rank, torch.bfloat16)
    for spec in ("W4A8-r8", "W4A8-g64-r8"):
        cases[f"split_fold_fast_path_{spec}"] = (split_fold_fast_path, spec)
    cases["split_fold_fast_path_W4A8-r8_fused_down"] = (split_fold_fast_path, "W4A8-r8", "fused")
    for dtype, width in ((torch.int8, 80), (torch.int8, 96), (torch.float8_e4m3fn, 112)):
        cases[f"int4_unpack_{str(dtype).split('.')[-1]}_width{width}"] = (int4_unpacking, dtype, width)
    for group in (16, 64):
        cases[f"int4_groups_to_e4m3_g{group}"] = (int4_groups_to_e4m3, group)
    for dtype in (torch.bfloat16, torch.float16):
        for with_bias in (True, False):
            cases[f"int8_epilogue_{str(dtype).split('.')[-1]}_bias{with_bias}"] = (int8_epilogue, dtype, with_bias)
    for bits in (8, 4):
        for rows in (1, 5, 16):
            cases[f"streaming_gemm_w{bits}_rows{rows}"] = (streaming_gemm, bits, rows)
    for spec in ("W4A8-g16", "W4A8", "W8A8", "W6A8", "W4A4-g32"):
        for dtype in (torch.bfloat16, torch.float16):
            cases[f"simulate_linear_{spec}_{str(dtype).split('.')[-1]}"] = (simulate_linear, spec, dtype)
    return cases


def run_interpreted(script):
    """{check: "ok" or its failure} from tests/<script> run in a child process with TRITON_INTERPRET=1 (the test
    files' module fixture)."""
    import subprocess
    import pytest
    pytest.importorskip("triton", reason="Triton comes with CUDA builds of torch; this torch has none")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", script)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_checks(cases, *leading):
    """Each case called as function(*leading, *arguments); prints {name: "ok" or the failure} as one JSON line."""
    results = {}
    for name, (function, *arguments) in cases.items():
        try:
            function(*leading, *arguments)
            results[name] = "ok"
        except Exception as error:  # reported per check by the parent test
            results[name] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"
    print(json.dumps(results))


def main():
    sys.path.insert(0, ROOT)
    import qsched  # noqa: F401  registers the pack as comfyui_qsched
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    run_checks(checks(), tk)


if __name__ == "__main__":
    main()
