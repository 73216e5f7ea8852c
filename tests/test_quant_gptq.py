"""Calibrated rounding (quant/gptq.py): GPTQ against an independent numpy implementation of the paper's sequential
Optimal Brain Quantization updates, the MSE-optimal scales against a brute-force search, the input moments of Linear
and Conv2d layers against their outputs, and quantize_module with calibration moments (plan checks, backends, the
low-rank branch, the error it removes)."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from comfyui_qsched.quant import numerics, quantize_module
from comfyui_qsched.quant.gptq import InputMoments, gptq_quantize_weight


def correlated_inputs(count, columns, seed=0):
    """Inputs whose columns are strongly correlated, as a layer's inputs are (where GPTQ's updates matter)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns ** 0.5 + torch.eye(columns)
    return torch.randn(count, columns, generator=generator) @ mixing


def numpy_obq(weight, hessian, scale, bits, damping=0.01):
    """GPTQ's result computed as the paper states it (Frantar et al. 2023, eq. 2-3, fixed column order, section 3
    step 1): quantize column j, then update the columns F not yet quantized by
    delta_F = -(w_j - q_j) / [H_F^-1]_jj * [H_F^-1]_{j,F}, and drop j from F by inverting H restricted to F anew."""
    w = weight.double().numpy().copy()
    h = hessian.double().numpy().copy()
    h += damping * np.mean(np.diag(h)) * np.eye(h.shape[0])
    s = np.repeat(scale.double().numpy(), w.shape[1] // scale.shape[1], axis=1)
    limit = numerics.qmax(bits)
    codes = np.zeros_like(w)
    remaining = list(range(w.shape[1]))
    for j in range(w.shape[1]):
        inverse = np.linalg.inv(h[np.ix_(remaining, remaining)])       # H_F^-1, F = columns j.. still free
        codes[:, j] = np.clip(np.round(w[:, j] / s[:, j]), -limit, limit)
        error = (w[:, j] - codes[:, j] * s[:, j]) / inverse[0, 0]
        w[:, remaining] -= np.outer(error, inverse[0])
        remaining = remaining[1:]
    return codes


@pytest.mark.parametrize("bits,group_size", [(4, None), (4, 8), (3, 16), (8, None)])
def test_gptq_equals_the_sequential_obq_updates(bits, group_size):
    rows, columns = 6, 32
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(1))
    x = correlated_inputs(400, columns)
    hessian = x.T @ x / len(x)
    codes, scale = gptq_quantize_weight(weight, hessian, bits, group_size)
    assert torch.equal(scale, numerics.mse_scales(weight, bits, group_size))
    np.testing.assert_array_equal(codes.numpy(), numpy_obq(weight, hessian, scale, bits))


def test_lazy_batches_change_nothing():
    weight = torch.randn(5, 40, generator=torch.Generator().manual_seed(2))
    x = correlated_inputs(300, 40, seed=3)
    hessian = x.T @ x / len(x)
    reference, _ = gptq_quantize_weight(weight, hessian, 4, 8, block=1)
    for block in (7, 16, 128):
        assert torch.equal(gptq_quantize_weight(weight, hessian, 4, 8, block=block)[0], reference)


def test_uncorrelated_inputs_round_to_nearest():
    """With H = I no column's error can be compensated by another: GPTQ is rounding to nearest on its scales."""
    weight = torch.randn(8, 24, generator=torch.Generator().manual_seed(4))
    codes, scale = gptq_quantize_weight(weight, torch.eye(24), 4, 8)
    nearest = torch.round(weight.reshape(8, 3, 8) / scale.unsqueeze(-1)).clamp(-7, 7).reshape(8, 24)
    assert torch.equal(codes, nearest.to(torch.int8))


def test_gptq_lowers_the_output_error_on_its_inputs():
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(5))
    x = correlated_inputs(2000, 64, seed=6)
    codes, scale = gptq_quantize_weight(weight, x.T @ x / len(x), 4, 16)
    nearest = numerics.dequantize_weight(*numerics.quantize_weight(weight, 4, 16))
    calibrated = numerics.dequantize_weight(codes, scale)
    held_out = correlated_inputs(2000, 64, seed=6)[1000:] * 1.1   # the same distribution, other samples
    error = lambda w: float(((held_out @ (weight - w).T) ** 2).mean())   # noqa: E731
    assert error(calibrated) < 0.75 * error(nearest)


def test_unseen_columns_keep_nearest_codes():
    """A column the calibration never fed (zero input: H's row and column are zero) takes no error and gives none."""
    weight = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
    x = correlated_inputs(500, 16, seed=8)
    x[:, 5] = 0
    codes, scale = gptq_quantize_weight(weight, x.T @ x / len(x), 4)
    assert torch.equal(codes[:, 5], torch.round(weight[:, 5] / scale[:, 0]).clamp(-7, 7).to(torch.int8))


def test_mse_scales_are_the_best_clip_of_the_grid():
    weight = torch.randn(6, 32, generator=torch.Generator().manual_seed(9))
    weight[0, 3] = 9.0   # an outlier that round-to-nearest at amax pays for
    for bits, group_size in ((4, None), (4, 8), (2, 16)):
        scale = numerics.mse_scales(weight, bits, group_size)
        groups = weight.reshape(6, -1, group_size or 32)
        amax = groups.abs().amax(-1)
        limit = numerics.qmax(bits)
        for row in range(6):
            for group in range(groups.shape[1]):
                values = groups[row, group].double()
                # each candidate as it is stored: float16 per group, float32 per channel
                stored = {r: float((amax[row, group] * r / limit).to(torch.float16 if group_size else torch.float32))
                          for r in numerics.CLIP_RATIOS}
                errors = [(float(((torch.round(values / stored[r]).clamp(-limit, limit) * stored[r] - values) ** 2)
                                 .sum()), r) for r in numerics.CLIP_RATIOS]
                best = min(errors, key=lambda e: (e[0], -e[1]))[1]
                assert scale.dtype == (torch.float16 if group_size else torch.float32)
                assert scale[row, group].item() == pytest.approx(stored[best], rel=1e-6)
    # clipping pays for the outlier's row: its error is below rounding at amax
    nearest = numerics.dequantize_weight(*numerics.quantize_weight(weight, 4))
    clipped = numerics.dequantize_weight(torch.round(weight / scale_at(weight, 4)).clamp(-7, 7), scale_at(weight, 4))
    assert ((clipped - weight)[0] ** 2).sum() < ((nearest - weight)[0] ** 2).sum()


def scale_at(weight, bits):
    return numerics.mse_scales(weight, bits, None)


def test_input_moments_of_linear_and_conv_layers():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(1), nn.Linear(5 * 4 * 4, 7))
    x = torch.randn(6, 3, 8, 8)
    with InputMoments(model, ["0", "3"]) as moments:
        model(x)
        model(x[:2] * 2)
    hessians = moments.hessians
    flat = torch.relu(model[0](torch.cat([x, x[:2] * 2]))).flatten(1)
    torch.testing.assert_close(hessians["3"], (flat.T @ flat / len(flat)).float(), rtol=1e-5, atol=1e-6)
    # the conv's moments are those of the patches its weight multiplies: w H wᵀ is the mean square of its
    # (bias-free) outputs over every output pixel
    conv = model[0]
    outputs = nn.functional.conv2d(torch.cat([x, x[:2] * 2]), conv.weight, None, conv.stride, conv.padding)
    w = conv.weight.reshape(5, -1)
    torch.testing.assert_close(torch.diagonal(w @ hessians["0"] @ w.T),
                               (outputs ** 2).mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    assert not model[0]._forward_hooks and not model[3]._forward_hooks   # removed on exit


def test_input_moments_refuse_layers_they_cannot_take():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU())
    with pytest.raises(ValueError, match="grouped convolution"):
        InputMoments(model, ["0"]).__enter__()
    with pytest.raises(TypeError, match="ReLU"):
        InputMoments(model, ["1"]).__enter__()


def small_model():
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(48, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 16))


def calibrate(model, x):
    with InputMoments(model, ["0", "2", "4"]) as moments:
        reference = model(x)
    return moments.hessians, reference


@pytest.mark.parametrize("spec", ["W4A8", "W4A8-g16", "W4A4-g16-r8", "W3A16"])
def test_quantize_module_rounds_the_calibrated_layers_by_gptq(spec):
    model, x = small_model(), correlated_inputs(600, 48, seed=12)
    hessians, reference = calibrate(model, x)
    nearest, calibrated = copy.deepcopy(model), copy.deepcopy(model)
    quantize_module(nearest, spec, policy="first_last=off")
    report = quantize_module(calibrated, spec, policy="first_last=off", hessians=hessians)
    assert all(layer.backend.endswith("GPTQ rounding") for layer in report.layers if layer.spec)
    for name in ("0", "2", "4"):   # same layout as round to nearest: cache, export and kernels take it as is
        assert calibrated.get_submodule(name).weight.shape == nearest.get_submodule(name).weight.shape
    with torch.no_grad():
        assert float(((calibrated(x) - reference) ** 2).mean()) < float(((nearest(x) - reference) ** 2).mean())


def test_quantize_module_checks_calibration_moments():
    model, x = small_model(), correlated_inputs(100, 48)
    hessians, _ = calibrate(model, x)
    with pytest.raises(ValueError, match="does not quantize"):
        quantize_module(copy.deepcopy(model), "W4A8", hessians=hessians)   # first and last layer kept by default
    with pytest.raises(ValueError, match="exclude each other"):
        quantize_module(copy.deepcopy(model), "W4A8", policy="first_last=off", hessians=hessians, stored={})
    with pytest.raises(ValueError, match="integer codes"):
        quantize_module(copy.deepcopy(model), "W8A8", policy="first_last=off", hessians=hessians, backend="fp8")
    wrong = {**hessians, "2": torch.eye(10)}
    with pytest.raises(ValueError, match="layer '2'.*do not match"):
        quantize_module(copy.deepcopy(model), "W4A8", policy="first_last=off", hessians=wrong)
