"""The 8-bit attention's Triton kernels (quant/kernels/attention_kernels.py), run by Triton's interpreter on the
CPU against quant/attention.py (tests/triton_attention_checks.py, in a child process started with
TRITON_INTERPRET=1). bench/gpu_attention.py repeats the checks on a GPU."""
import json
import os
import subprocess
import sys

import pytest

import triton_attention_checks

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton", reason="Triton comes with CUDA builds of torch; this torch has none")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, os.path.join(TESTS, "triton_attention_checks.py")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", sorted(triton_attention_checks.checks()))
def test_kernel_matches_its_torch_reference(interpreted, check):
    assert interpreted[check] == "ok", interpreted[check]
