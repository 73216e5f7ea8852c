"""The 8-bit attention's Triton kernels (quant/kernels/attention_kernels.py), run by Triton's interpreter on the
CPU against quant/attention.py (tests/triton_attention_checks.py, in a child process started with
TRITON_INTERPRET=1). bench/gpu_attention.py repeats the checks on a GPU."""

import pytest

import triton_attention_checks
import triton_interpreted_checks


@pytest.fixture(scope="module")
def interpreted():
    return triton_interpreted_checks.run_interpreted("triton_attention_checks.py")


@pytest.mark.parametrize("check", sorted(triton_attention_checks.checks()))
def test_kernel_matches_its_torch_reference(interpreted, check):
    assert interpreted[check] == "ok", interpreted[check]
