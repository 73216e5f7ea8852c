"""Checks of quant/kernels/gemm_kernels.py under Triton's interpreter, run by tests/test_quant_gemm.py in a child
process started with TRITON_INTERPRET=1. Prints one JSON object: check name -> "ok" or the failure.

References are written here, independently of quant/qgemm.py: int8 codes through int64 matmuls (exact), scaled in
the order the kernel documents; e4m3 codes through float64 (exact products and sums)."""
import os
import sys

import torch

from triton_interpreted_checks import run_checks  # the shared runner (this folder is on the path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E4M3 = torch.float8_e4m3fn


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def int8_reference(a, sa, codes, scale, bias, lr, up, dtype):
    """int64 partial sums per group (exact), float32 in group order, then row scale, bias, branch; one rounding."""
    groups = scale.shape[1]
    size = a.shape[1] // groups
    sa = sa.float().view(-1, 1)
    if groups == 1:
        out = (a.long() @ codes.long().t()).float() * sa * scale.float().view(1, -1)
    else:
        out = torch.zeros(a.shape[0], codes.shape[0])
        for g in range(groups):
            part = a[:, g * size:(g + 1) * size].long() @ codes[:, g * size:(g + 1) * size].long().t()
            out = out + part.float() * scale[:, g].float()
        out = out * sa
    if bias is not None:
        out = out + bias.float()
    if lr is not None:
        out = out + lr.float() @ up.float().t()
    return out.to(dtype)


def float64_reference(a, sa, codes, scale, bias, lr, up):
    """The exact product of the codes and scales (float64), for the e4m3 kernels' tolerance checks."""
    groups = scale.shape[1]
    w = codes.double().reshape(codes.shape[0], groups, -1) * scale.double().unsqueeze(-1)
    out = (a.double() @ w.reshape(codes.shape[0], -1).t()) * sa.double().view(-1, 1)
    if bias is not None:
        out = out + bias.double()
    if lr is not None:
        out = out + lr.double() @ up.double().t()
    return out


def operands(a_kind, b_kind, group, rows, with_bias, with_branch, half_scales, seed, cols=256):
    """Activation codes (per-token, from x with magnitudes over 4 decades and a zero row), weight codes as stored and
    unpacked, scales, bias, low-rank factors."""
    from comfyui_qsched.quant import fp8_codes, int8_codes, numerics
    generator = torch.Generator().manual_seed(seed)
    n = 72
    x = torch.randn(rows, cols, generator=generator) * torch.logspace(-3, 1, rows)[:, None]
    x[rows // 2] = 0
    a, sa = (int8_codes if a_kind == "int8" else fp8_codes).quantize_rows(x, rows)
    w = torch.randn(n, cols, generator=generator)
    w[:, 5] *= 30  # an outlier column: groups get scales far apart
    if b_kind == "e4m3":
        scale = (w.abs().amax(1, keepdim=True) / 448)
        codes = (w / scale).to(E4M3)
        stored = codes
    else:
        codes, scale = numerics.quantize_weight(w, 4 if b_kind == "int4" else 8, group)
        stored = numerics.pack_int4(codes) if b_kind == "int4" else codes
    if half_scales:
        scale = scale.half()
    bias = torch.randn(n, generator=generator).to(torch.bfloat16) if with_bias else None
    lr = up = None
    if with_branch:
        lr = (torch.randn(rows, 24, generator=generator) * 4).to(torch.bfloat16)
        up = (torch.randn(n, 24, generator=generator) / 4).to(torch.bfloat16)
    return a, sa, stored, codes, scale, bias, lr, up


def gemm(gk, a_kind, b_kind, group, rows, with_bias, with_branch, dtype, half_scales=False, tiles=None, cols=256,
         halves=False):
    a, sa, stored, codes, scale, bias, lr, up = operands(a_kind, b_kind, group, rows, with_bias, with_branch,
                                                        half_scales, seed=rows * 7 + (group or 0), cols=cols)
    half = gk.halves_step(rows, group or 0) if halves else 0
    if halves:
        stored = gk.halves_layout(stored, cols, half)
    out = gk.qgemm(a, sa, stored, scale, bias, rows, codes.shape[0], a_kind == "int8", b_kind == "int4", dtype, lr,
                   up, tiles=tiles, halves=half)
    assert out.dtype == dtype and out.shape == (rows, codes.shape[0])
    if a_kind == "int8":
        # exact int32 partial sums, the documented order of float32 roundings: bit for bit (the branch's float32 dot
        # of 24 products may sum in another order: within float32 rounding of its terms)
        expected = int8_reference(a, sa, codes, scale, bias, lr, up, dtype)
        if lr is None:
            assert same_bits(out, expected), f"max diff {(out.float() - expected.float()).abs().max()}"
            return
    exact = float64_reference(a, sa, codes, scale, bias, lr, up)
    # float32 partial sums (e4m3: not exact in float32) and one rounding: within a few float32 ulps of the size of the
    # terms, plus half a unit of the output dtype's last place
    terms = float64_reference(a.double().abs(), sa, codes.double().abs(), scale.abs(), None if bias is None else
                              bias.abs(), None if lr is None else lr.abs(), None if up is None else up.abs())
    unit = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11 if dtype == torch.float16 else 0.0
    bound = terms * 2.0 ** -20 + exact.abs() * unit
    excess = (out.double() - exact).abs() - bound
    assert bool((excess <= 0).all()), f"worst excess {float(excess.max())}"


def dequantized(gk, a_kind, b_kind, group, rows, with_branch, dtype):
    """The float16-dequantizing form: float64 of the codes times the float16-rounded weights fp16(code * scale),
    within float32 summation (a few ulps of the size of the terms) and the output's rounding."""
    a, sa, stored, codes, scale, bias, lr, up = operands(a_kind, b_kind, group, rows, True, with_branch, False,
                                                        seed=rows + 5)
    out = gk.qgemm(a, sa, stored, scale, bias, rows, codes.shape[0], a_kind == "int8", b_kind == "int4", dtype, lr,
                   up, dequant=True)
    weight = (codes.float().reshape(codes.shape[0], scale.shape[1], -1) * scale.float().unsqueeze(-1)).half()
    weight = weight.reshape(codes.shape[0], -1).double()
    ones = torch.ones(codes.shape[0], 1, dtype=torch.float64)
    exact = float64_reference(a, sa, weight, ones, bias, lr, up)
    terms = float64_reference(a.double().abs(), sa, weight.abs(), ones, bias.abs(), None if lr is None else lr.abs(),
                              None if up is None else up.abs())
    unit = 2.0 ** -8 if dtype == torch.bfloat16 else 0.0
    excess = (out.double() - exact).abs() - (terms * 2.0 ** -20 + exact.abs() * unit)
    assert bool((excess <= 0).all()), f"worst excess {float(excess.max())}"
    differs = gk.qgemm(a, sa, stored, scale, bias, rows, codes.shape[0], a_kind == "int8", b_kind == "int4",
                       torch.float32, lr, up)
    assert not torch.equal(differs, out.float()), "the exact form gave the same numbers: the flag did nothing"


def same_for_any_tiles(gk, group):
    """int8 codes: the result does not depend on the tile config (exact int32 sums, fixed group order)."""
    a, sa, stored, codes, scale, bias, lr, up = operands("int8", "int4", group, 45, True, False, False, seed=9)
    first = gk.qgemm(a, sa, stored, scale, bias, 45, 72, True, True, torch.bfloat16)
    other = gk.qgemm(a, sa, stored, scale, bias, 45, 72, True, True, torch.bfloat16,
                     tiles=(16, 32, group or 32, 4, 2))
    assert same_bits(first, other)


def strided_and_padded_rows(gk):
    """Row stride above K (a padded code buffer, rows past `count` ignored) and [N] per-channel scales."""
    a, sa, stored, codes, scale, bias, lr, up = operands("int8", "int8", None, 40, False, False, False, seed=3)
    wide = torch.full((48, 300), 77, dtype=torch.int8)
    wide[:40, :256] = a
    padded_scales = torch.cat([sa, torch.ones(8, 1)])
    out = gk.qgemm(wide[:, :256], padded_scales, stored, scale.view(-1), None, 40, 72, True, False, torch.float32)
    assert same_bits(out, int8_reference(a, sa, codes, scale, None, None, None, torch.float32))


def halves_layout_moves_columns(gk):
    """halves_layout against its definition written out: in each step of 2h columns, byte j = column j | column h + j
    << 4 (offset-8 nibbles); it refuses column counts that are not a multiple of 2h."""
    from comfyui_qsched.quant import numerics
    codes = torch.randint(-8, 8, (5, 128), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    out = gk.halves_layout(numerics.pack_int4(codes), 128, 32)
    stored = (codes.to(torch.int16) + 8).reshape(5, 2, 2, 32)
    expected = (stored[:, :, 0] | (stored[:, :, 1] << 4)).reshape(5, 64).to(torch.uint8)
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    try:
        gk.halves_layout(numerics.pack_int4(codes[:, :96]), 96, 32)
    except ValueError as error:
        assert "multiple of 64" in str(error)
    else:
        raise AssertionError("96 columns in steps of 64 were accepted")


def refuses_unsupported(gk):
    from comfyui_qsched.quant import numerics
    codes, scale = numerics.quantize_weight(torch.randn(8, 96), 8, 48)
    a = torch.zeros(4, 96, dtype=torch.int8)
    try:
        gk.qgemm(a, torch.ones(4, 1), codes, scale, None, 4, 8, True, False, torch.float32)
    except ValueError as error:
        assert "groups of 16, 32, 64, 128" in str(error)
    else:
        raise AssertionError("group size 48 was taken")


def checks():
    cases = {}
    combos = [("int8", "int8"), ("int8", "int4"), ("e4m3", "e4m3"), ("e4m3", "int4")]
    for a_kind, b_kind in combos:
        for group in (None, 16, 64):
            if group and b_kind == "e4m3":
                continue  # e4m3 weights are per channel only (the fp8 backend's W8)
            for with_bias in (True, False):
                for with_branch in (False, True):
                    for dtype in (torch.bfloat16, torch.float32):
                        name = (f"{a_kind}_x_{b_kind}_g{group or 'channel'}_bias{with_bias}_branch{with_branch}_"
                                f"{str(dtype)[6:]}")
                        cases[name] = (gemm, a_kind, b_kind, group, 37, with_bias, with_branch, dtype)
    cases["int8_x_int4_g64_130_rows_two_row_tiles"] = (gemm, "int8", "int4", 64, 130, True, False, torch.bfloat16)
    cases["int8_x_int8_channel_130_rows_float16"] = (gemm, "int8", "int8", None, 130, True, True, torch.float16)
    cases["e4m3_x_int4_g16_130_rows"] = (gemm, "e4m3", "int4", 16, 130, False, True, torch.bfloat16)
    cases["int8_x_int4_g32_float16_scales"] = (gemm, "int8", "int4", 32, 37, True, False, torch.bfloat16, True)
    cases["e4m3_x_int4_g64_float16_scales"] = (gemm, "e4m3", "int4", 64, 37, True, True, torch.float32, True)
    # 200 columns: the last step of 128 is partly past the edge (the packed halves' masks)
    for a_kind in ("int8", "e4m3"):
        cases[f"{a_kind}_x_int4_channel_200_columns"] = (gemm, a_kind, "int4", None, 37, True, False, torch.bfloat16,
                                                         False, None, 200)
    # the halves layout (two dots per step, no interleave): per channel and groups of 32 / 64, 1 and 2 row tiles
    for a_kind in ("int8", "e4m3"):
        for group in (None, 32, 64):
            for rows, with_branch in ((37, True), (300, False)):
                cases[f"halves_{a_kind}_x_int4_g{group or 'channel'}_{rows}_rows_branch{with_branch}"] = (
                    gemm, a_kind, "int4", group, rows, True, with_branch, torch.bfloat16, False, None, 256, True)
    cases["int8_x_int8_g128"] = (gemm, "int8", "int8", 128, 37, True, False, torch.bfloat16)
    for a_kind, b_kind, group, branch in (("int8", "int4", 64, False), ("int8", "int4", 16, True),
                                          ("e4m3", "int4", 64, True), ("int8", "int8", 32, False)):
        for dtype in (torch.bfloat16, torch.float32):
            cases[f"dequant_{a_kind}_x_{b_kind}_g{group}_branch{branch}_{str(dtype)[6:]}"] = (
                dequantized, a_kind, b_kind, group, 45, branch, dtype)
    for group in (None, 16, 64):
        cases[f"same_for_any_tiles_g{group or 'channel'}"] = (same_for_any_tiles, group)
    cases["strided_and_padded_rows"] = (strided_and_padded_rows,)
    cases["refuses_unsupported_group"] = (refuses_unsupported,)
    cases["halves_layout_moves_columns"] = (halves_layout_moves_columns,)
    return cases


def main():
    sys.path.insert(0, ROOT)
    import qsched  # noqa: F401  registers the pack as comfyui_qsched
    from comfyui_qsched.quant.kernels import gemm_kernels as gk
    run_checks(checks(), gk)


if __name__ == "__main__":
    main()
