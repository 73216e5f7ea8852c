"""The Triton kernels of the fast eager path (quant/kernels/triton_kernels.py), run by Triton's interpreter on the
CPU against the torch code they replace (tests/triton_interpreted_checks.py, in a child process started with
TRITON_INTERPRET=1). Triton comes with CUDA builds of torch; bench/peers.py --kernels repeats the checks on a GPU."""

import pytest
import torch

import triton_interpreted_checks


@pytest.fixture(scope="module")
def interpreted():
    return triton_interpreted_checks.run_interpreted("triton_interpreted_checks.py")


@pytest.mark.parametrize("check", sorted(triton_interpreted_checks.checks()))
def test_kernel_matches_its_torch_reference(interpreted, check):
    assert interpreted[check] == "ok", interpreted[check]


def test_specialization_key_follows_what_triton_specializes_on():
    pytest.importorskip("triton", reason="Triton comes with CUDA builds of torch; this torch has none")
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    aligned, offset = torch.zeros(64), torch.zeros(65)[1:]
    assert tk._specialization(aligned) != tk._specialization(offset)  # 16-byte alignment of the pointer
    assert len({tk._specialization(1), tk._specialization(3), tk._specialization(32)}) == 3
    assert tk._specialization(48) == tk._specialization(32) != tk._specialization(2 ** 31)
    assert tk._specialization(True) is True and tk._specialization(torch.float32) == torch.float32


def test_quantize_rows_is_what_the_fp8_layer_runs_without_triton():
    """The torch definition the kernel is held to is also Fp8Linear's own path off the GPU."""
    from comfyui_qsched.quant import quantize_module
    from comfyui_qsched.quant.fp8 import E4M3, quantize_rows
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_module(net, "W8A8", backend="fp8", policy="first_last=off")
    x = torch.randn(5, 64)
    codes, scale = quantize_rows(x, 16)
    expected = torch._scaled_mm(codes, net[0].weight.to(E4M3).t(), scale_a=scale,
                                scale_b=net[0].weight_scale.view(1, -1), bias=net[0].bias, out_dtype=torch.float32)
    assert torch.equal(net(x), expected[:5])
