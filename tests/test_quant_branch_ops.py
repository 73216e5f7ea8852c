"""The low-rank branch's fast forms (quant/branch_ops.py) in their torch definitions on the CPU, against float64
products: the fused form keeps the branch at 16-bit precision; the widened-K fold holds beside 4-bit weights only
(the Triton kernels are held to these definitions in tests/test_quant_kernels.py and bench/lowrank_kernels.py)."""
import pytest
import torch

from comfyui_qsched.quant import QuantSpec, branch_ops, fp8, numerics


def layer(seed, rows=384, cols=512, rank=32):
    """A weight with a decaying spectrum, its rank-r split, and activations with outlier channels."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator))
    spectrum = torch.logspace(1.3, -1, min(rows, cols))
    weight = (u[:, :len(spectrum)] * spectrum) @ v[:, :len(spectrum)].t() / cols ** 0.5
    x = torch.randn(64, cols, generator=generator)
    x[:, :4] *= 20
    left, values, right = torch.linalg.svd(weight.double(), full_matrices=False)
    root = values[:rank].sqrt()
    up = (left[:, :rank] * root).to(torch.bfloat16)
    down = (root[:, None] * right[:rank]).to(torch.bfloat16)
    return weight, x.to(torch.bfloat16), down, up, weight - up.float() @ down.float()


def quantized(residual, bits):
    if bits == 8:
        scale = residual.abs().amax(1, keepdim=True) / fp8.E4M3_MAX
        codes = (residual / scale).to(fp8.E4M3)
        return codes, codes, scale
    codes, scale = numerics.quantize_weight(residual, 4)
    return codes.to(torch.bfloat16).to(fp8.E4M3), numerics.pack_int4(codes), scale


def error(y, exact):
    return float((y.double() - exact).norm() / exact.norm())


def test_fold_factors_move_magnitude_without_changing_the_product():
    weight, x, down, up, residual = layer(0)
    _, _, scale = quantized(residual, 4)
    down_folded, codes = branch_ops.fold_factors(down, up, scale)
    assert codes.dtype == fp8.E4M3 and float(codes.float().abs().amax()) == branch_ops.FOLD_B_MAX
    product = (x.double() @ down_folded.double().t()) @ (codes.double() * scale.double()).t()
    exact = x.double() @ down.double().t() @ up.double().t()
    assert error(product, exact) < 0.08  # e4m3 codes of up and bf16 of down': FP8 precision, no more


@pytest.mark.parametrize("bits", [8, 4])
def test_fused_branch_keeps_16_bit_precision(bits):
    weight, x, down, up, residual = layer(bits)
    codes, packed, scale = quantized(residual, bits)
    exact = x.double() @ weight.double().t()
    main = x.double() @ (codes.double() * scale.double()).t()  # float activations: the weights' error alone
    fused = branch_ops.fused_reference(x, packed, scale, None, 384, bits == 4, down, up, False)
    unfused = torch.nn.functional.linear(x, (codes.float() * scale).to(torch.bfloat16)).double() \
        + x.double() @ down.double().t() @ up.double().t()
    assert error(fused, exact) < error(unfused, exact) * 1.05 + 0.02 and error(main + x.double() @ down.double().t()
                                                                            @ up.double().t(), exact) < 0.1


@pytest.mark.parametrize("bits", [8, 4])
def test_fold_holds_beside_4_bit_weights_only(bits):
    weight, x, down, up, residual = layer(10 + bits)
    codes, packed, scale = quantized(residual, bits)
    exact = x.double() @ weight.double().t()
    fused = error(branch_ops.fused_reference(x, packed, scale, None, 384, bits == 4, down, up, False), exact)
    down_folded, up_codes = branch_ops.fold_factors(down, up, scale)
    folded = error(branch_ops.fp8_fold_reference(x, codes, scale, None, down_folded, up_codes), exact)
    holds = branch_ops.fold_holds(QuantSpec.parse(f"W{bits}A8"))
    assert holds == (bits == 4)
    if holds:
        assert folded < fused * 1.15, (folded, fused)
    else:
        assert folded > fused * 1.5, (folded, fused)  # why W8A8 keeps the fused form


def test_split_e4m3_holds_values_to_seven_bits_and_up_to_896():
    """hi + lo of split_e4m3 against float64: within 2**-7 relative from 2**-2 (below it lo reaches e4m3's
    subnormals) up to 896, where it saturates."""
    values = torch.cat([torch.logspace(-0.6, 2.6, 2000), -torch.logspace(-0.6, 2.6, 2000), torch.tensor([700.0, 890.0])])
    hi, lo = branch_ops.split_e4m3(values)
    assert hi.dtype == lo.dtype == fp8.E4M3
    total = hi.double() + lo.double()
    assert float(((total - values.double()).abs() / values.double().abs()).max()) < 2 ** -7
    assert float(((hi.double() - values.double()).abs() / values.double().abs()).max()) > 2 ** -5  # hi alone: 4 bits
    assert sum(float(part.double()) for part in branch_ops.split_e4m3(torch.tensor(5000.0))) == 896.0


@pytest.mark.parametrize("bits", [4])
def test_split_fold_keeps_the_branch_at_16_bit_precision(bits):
    """The split fold's branch (its output less the 8-bit GEMM without the branch) against the float64 product of the
    factors: as close as the 16-bit unfused branch, where the one-e4m3 fold is 10x further off."""
    weight, x, down, up, residual = layer(20)
    codes, packed, scale = quantized(residual, bits)
    x = x[:, :].float()
    rows = x.shape[0]
    exact = x.double() @ down.double().t() @ up.double().t()
    main = branch_ops.split_fold_reference(x, codes, scale, None, *branch_ops.split_fold_factors(
        down, up * 0, scale)).double()  # a zero branch: the 8-bit GEMM alone, through the same code
    down_folded, tail = branch_ops.split_fold_factors(down, up, scale)
    assert tail.shape == (384, branch_ops.split_columns(32)) == (384, 96)
    split = branch_ops.split_fold_reference(x, codes, scale, None, down_folded, tail).double() - main
    bf16 = torch.nn.functional.linear(torch.nn.functional.linear(x.to(torch.bfloat16), down), up).double()
    down_one, up_codes = branch_ops.fold_factors(down, up, scale)
    one = branch_ops.fp8_fold_reference(x, codes, scale, None, down_one, up_codes).double() - main
    assert split.shape == (rows, 384)
    print(f"branch error vs float64: split {error(split, exact):.4f}, bf16 {error(bf16, exact):.4f}, "
          f"one e4m3 {error(one, exact):.4f}; split_bound {branch_ops.split_bound(down, up, scale):.1f}")
    assert error(split, exact) < 2 * error(bf16, exact) + 1e-3 and error(one, exact) > 10 * error(split, exact)
