"""The digits-quantizer experiment's parts (issue 22): stored bits per weight of the testbed's layers, the closed-form
fit through the testbed's trajectory (it lowers the quantized model's error to the FP model's prediction), merging
runs, and the small-sample floor's definition (identical samples score 0)."""
import pytest
import torch

from comfyui_qsched.calibration.closed_form import fit_schedule
from comfyui_qsched.quant import QuantSpec
from comfyui_qsched.testbed.digits import quantizer_experiment as qe
from comfyui_qsched.testbed.digits.experiment import load_testbed


@pytest.fixture(scope="module")
def unet():
    return load_testbed()[0]


def test_bits_per_weight_counts_codes_scales_and_factors(unet):
    shapes = qe.weight_shapes(unet)
    assert shapes["down1.conv1"] == (32, 32 * 9) and shapes["down1.emb"] == (32, 128)
    names = ["down1.conv1", "down1.emb"]
    weights = 32 * 288 + 32 * 128
    per_channel = qe.bits_per_weight(QuantSpec.parse("W4A8"), shapes, names)
    assert per_channel == pytest.approx((4 * weights + 16 * 32 * 2) / weights)
    assert qe.bits_per_weight(QuantSpec.parse("W4A8-g8"), shapes, names) == pytest.approx(6.0)
    rank = qe.bits_per_weight(QuantSpec.parse("W4A4-g16-r16"), shapes, names)
    assert rank == pytest.approx(5.0 + 16 * 16 * (32 + 288 + 32 + 128) / weights)
    assert qe.stored_bits(QuantSpec.parse("W4A4-g16-r16"), 32, 128) == 4 * 32 * 128 + 16 * 32 * 8 + 16 * 16 * 160
    assert qe.quantize(unet, "W4A8-g8")[1] == pytest.approx(6.0)       # every quantized layer's columns divide by 8


def test_the_testbed_fit_brings_the_quantized_prediction_towards_the_fp_one(unet):
    fp, _ = qe.quantize(unet, None)
    quantized, _ = qe.quantize(unet, "W4A8")
    trajectory = qe.Trajectory(fp, quantized, 2, pairs=10)
    schedule, fits = fit_schedule(trajectory, 2, "lcm", form="map", map_size=4)
    assert all(fit["residual"] < 0.9 * fit["uncorrected"] for fit in fits)
    assert schedule.map_shape == (1, 4, 4) and schedule.sampler == "lcm"
    x0, _, _, _ = trajectory(schedule, 0)
    x1, _, _, _ = trajectory(schedule, 1)
    assert torch.equal(x0, trajectory(QSchedSchedule_identity(), 0)[0])     # step 0 sees the initial noise
    assert not torch.equal(x1, trajectory(QSchedSchedule_identity(), 1)[0])  # step 1 follows the corrected step 0


def QSchedSchedule_identity():
    from comfyui_qsched.samplers import QSchedSchedule
    return QSchedSchedule.identity(2)


def test_merge_pools_cells_per_weights_and_keeps_the_first_duplicate():
    cell = lambda row, steps, fid: {"row": row, "steps": steps, "fid": fid}   # noqa: E731
    first = {"samples_per_seed": 7, "runs": [{"weights": "weights", "cells": [cell("fp32", 2, 1.0), cell("w4a8", 2, 2.0)]}]}
    second = {"samples_per_seed": 7, "runs": [{"weights": "weights", "cells": [cell("fp32", 2, 9.0),
                                                                                cell("w4a4-g16-r16-map", 2, 3.0)]},
                                              {"weights": "weights_wide", "cells": [cell("fp32", 2, 4.0)]}]}
    merged = qe.merge([first, second])
    assert [r["weights"] for r in merged["runs"]] == ["weights", "weights_wide"]
    assert [(c["row"], c["fid"]) for c in merged["runs"][0]["cells"]] == [("fp32", 1.0), ("w4a8", 2.0),
                                                                          ("w4a4-g16-r16-map", 3.0)]


def test_rows_the_quantizer_cannot_parse_are_left_out_by_name(capsys):
    assert qe.available_rows(["fp32", "w4a8-g8-map"]) == ["fp32", "w4a8-g8-map"]
    qe.ROWS["bad"] = ("bad", "W4A8-q3", "map")
    try:
        assert qe.available_rows(["fp32", "bad"]) == ["fp32"]
        assert "skipping row 'bad'" in capsys.readouterr().out
    finally:
        del qe.ROWS["bad"]


def test_the_wide_variant_trains_saves_and_loads_with_the_shipped_scorer(tmp_path):
    """Two tiny iterations of the same recipe at 4x width (the real run is the lead's GPU command): the wide UNet
    is saved with its config and loads from its folder, which gets the shipped classifier and critic."""
    from comfyui_qsched.testbed.digits import train_models
    from comfyui_qsched.testbed.digits.data import load_digits_tensors
    from comfyui_qsched.testbed.digits.networks import DigitsUNet
    from comfyui_qsched.testbed.digits.train import copy_metrics
    from comfyui_qsched.testbed.digits.weights import WEIGHTS_DIR, load_weights, save_weights
    images, labels = load_digits_tensors()
    torch.set_num_threads(1)
    teacher, _ = train_models.train_teacher(images[:32], labels[:32], 1, "cpu", 0, batch=2, width=4)
    assert teacher.config["channels"] == [128, 192, 256] and teacher.config["emb_dim"] == 512
    student, _ = train_models.distill_student(teacher, images[:32], labels[:32], 1, "cpu", 1, batch=2)
    folder = str(tmp_path / "weights_wide")
    copy_metrics(WEIGHTS_DIR, folder)
    save_weights(student, "student_lcm", {"width": 4}, folder)
    unet, scorer = load_testbed(folder)
    assert unet.conv_in.out_channels == 128
    shipped = load_testbed()[1]
    for a, b in zip(scorer.classifier.state_dict().values(), shipped.classifier.state_dict().values()):
        assert torch.equal(a, b)
    copy_metrics(WEIGHTS_DIR, folder)                   # a second call keeps what is there
    assert load_weights(DigitsUNet, "student_lcm", folder)[1] == {"width": 4}
    with pytest.raises(ValueError, match="positive integer multiplier"):
        train_models.wide_config(0)


def test_gptq_rows_take_moments_of_the_planned_layers_and_lower_the_error(unet):
    """calibration_moments covers exactly the layers the spec quantizes (positive semi-definite E[x xᵀ]), and the
    GPTQ-rounded model's prediction is closer to FP32's than round to nearest, on inputs the moments never saw."""
    hessians = qe.calibration_moments(unet, "W4A8-g16", 2, pairs=20)
    planned = [d.name for d in qe.DEFAULT_POLICY.plan(unet, QuantSpec.parse("W4A8-g16")) if d.spec is not None]
    assert sorted(hessians) == sorted(planned)
    assert all(torch.linalg.eigvalsh(h.double()).min() > -1e-6 * h.diagonal().max() for h in hessians.values())
    fp, _ = qe.quantize(unet, None)
    nearest, _ = qe.quantize(unet, "W4A8-g16")
    calibrated, bits = qe.quantize(unet, "W4A8-g16", hessians)
    assert bits == pytest.approx(5.0)
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(30, 1, 16, 16, generator=generator) * 3
    sigma, labels = torch.full((30,), 3.0), torch.arange(30) % 10
    with torch.no_grad():
        reference = fp(x, sigma, labels=labels)
        error = lambda model: float(((model(x, sigma, labels=labels) - reference) ** 2).mean())   # noqa: E731
        assert error(calibrated) < 0.8 * error(nearest)


def test_the_row_rule_leaves_out_the_layers_with_too_few_calibration_rows(unet):
    """As the calibrated loader rounds: at 2 steps the 40 pairs give each embedding layer (128 columns) 80 rows, under
    quant.gptq.MIN_ROWS_PER_COLUMN per column; the 16 x 16 convolutions get 40 x 2 x 256 rows."""
    everything = qe.calibration_moments(unet, "W4A8-g16", 2)
    ruled = qe.calibration_moments(unet, "W4A8-g16", 2, row_rule=True)
    left_out = set(everything) - set(ruled)
    assert {name for name in everything if name.endswith(".emb")} <= left_out
    assert "down1.conv1" in ruled and all(torch.equal(ruled[name], everything[name]) for name in ruled)


def test_smoothing_keeps_the_float_model_and_returns_the_smoothed_inputs_moments(unet):
    """smooth() moves scale from each layer's inputs to its weight columns: the float model's prediction is unchanged
    and the moments it returns are those measured on the smoothed model's own inputs (InputMoments), while the
    channels' spread shrinks."""
    import copy
    from comfyui_qsched.quant.gptq import InputMoments
    from comfyui_qsched.testbed.digits.diffusion import LCMDenoiser
    from comfyui_qsched.testbed.digits.generate import generate
    hessians = qe.calibration_moments(unet, "W4A4-g16", 2, pairs=20)
    smoothed_unet = copy.deepcopy(unet)
    returned = qe.smooth(smoothed_unet, hessians)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(20, 1, 16, 16, generator=generator) * 3
    sigma, labels = torch.full((20,), 3.0), torch.arange(20) % 10
    with torch.no_grad():
        before = LCMDenoiser(unet)(x, sigma, labels=labels)
        after = LCMDenoiser(smoothed_unet)(x, sigma, labels=labels)
    assert float((after - before).abs().max()) < 1e-4 * float(before.abs().max())
    with InputMoments(smoothed_unet, list(returned)) as moments, torch.no_grad():
        generate(LCMDenoiser(smoothed_unet).eval(), torch.arange(20) % 10, 2, qe.CALIBRATION_SEED)
    measured = moments.hessians
    for name, hessian in returned.items():
        scale = float(measured[name].abs().max())
        assert float((hessian - measured[name]).abs().max()) < 1e-3 * scale, name
    spread = lambda h: float(h.diagonal().max() / h.diagonal().clamp(min=1e-12).min())   # noqa: E731
    assert sum(spread(returned[n]) < spread(hessians[n]) for n in hessians) > len(hessians) // 2


def test_smoothed_rows_count_their_divisors_in_bits_per_weight(unet):
    """A smoothed row's b/w is its spec's plus one float32 divisor per input channel of each smoothed layer (as the
    loader stores them: quant.layers.bits_per_weight_of), over the quantized weights."""
    hessians = qe.calibration_moments(unet, "W4A4-g16", 2, pairs=10)
    _, plain = qe.quantize(unet, "W4A4-g16", hessians)
    _, smoothed = qe.quantize(unet, "W4A4-g16", hessians, smoothed=True)
    shapes = qe.weight_shapes(unet)
    channels = sum(unet.get_submodule(name).weight.shape[1] for name in hessians)
    weights = sum(shapes[name][0] * shapes[name][1] for name in hessians)
    assert plain == pytest.approx(5.0)
    assert smoothed == pytest.approx(5.0 + 32 * channels / weights)
