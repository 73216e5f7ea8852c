"""auto's measured per-shape rule for 8-bit compute on linears narrower than A8_MIN_FEATURES (issue 23 item 4):
the shapes come from the SDXL per-shape table (bench/gpu_attention.py) through bench/sdxl_a8_rule.py, and the
backend follows them per spec."""
import importlib.util
import os

import pytest
from torch import nn

from comfyui_qsched.quant import QuantSpec, auto, fp8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rule_module():
    spec = importlib.util.spec_from_file_location("sdxl_a8_rule", os.path.join(ROOT, "bench", "sdxl_a8_rule.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(tokens, k, n, fp8_ms, weight_only_ms, w4_fp8_ms=1.0, w4_weight_only_ms=1.0):
    return {"section": "sdxl_linear", "tokens": tokens, "in": k, "out": n, "W8A8 fp8 eager_ms": fp8_ms,
            "W8A8 weight-only eager_ms": weight_only_ms, "W4A8 fp8 eager_ms": w4_fp8_ms,
            "W4A8 weight-only eager_ms": w4_weight_only_ms}


def test_a_shape_pays_only_where_fp8_wins_at_every_token_count_by_the_margin():
    rule = rule_module()
    rows = [row(4096, 640, 5120, 0.030, 0.050), row(1024, 640, 5120, 0.012, 0.020),   # wins at both sizes
            row(4096, 640, 640, 0.010, 0.012), row(1024, 640, 640, 0.009, 0.008),     # loses at 512^2
            row(1024, 1280, 1280, 0.0097, 0.010),                                     # within the noise margin
            row(1024, 1280, 10240, 0.05, 0.09, w4_fp8_ms=0.05, w4_weight_only_ms=0.12)]
    shapes = rule.measured_shapes(rows)
    assert shapes["W8A8"] == {(640, 5120), (1280, 10240)}
    assert shapes["W4A8"] == {(1280, 10240)}


@pytest.mark.parametrize("spec_name, path", [("W8A8", "fp8"), ("W4A8", "weight-only")])
def test_auto_takes_fp8_for_a_measured_shape_of_that_spec_only(monkeypatch, spec_name, path):
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: True)
    monkeypatch.setattr(auto, "A8_MEASURED_SHAPES", {"W8A8": frozenset({(640, 5120)}), "W4A8": frozenset()})
    backend = auto.AutoBackend()
    backend.check(None, "cuda")
    assert backend.choose(nn.Linear(640, 5120), QuantSpec.parse(spec_name))[0] == path
    assert backend.choose(nn.Linear(5120, 640), QuantSpec.parse(spec_name))[0] == "weight-only"  # the other way
