"""Digits testbed: the shipped weights load and reproduce their recorded metrics, bad input is refused clearly,
and a reduced experiment shows the robust facts (naive W4A4 is worse than FP; the search never returns a schedule
worse than identity on its calibration set)."""
import math
import os
import shutil

import pytest
import torch

from comfyui_qsched.samplers import QSchedSchedule
from comfyui_qsched.testbed.digits import data, experiment, generate, weights
from comfyui_qsched.testbed.digits.degrade import KINDS, degrade
from comfyui_qsched.testbed.digits.networks import DigitsCNN, DigitsUNet
from comfyui_qsched.testbed.digits.scoring import FeatureFID, frechet_distance, gaussian_stats


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: OpenMP barriers stall on a busy 2-core machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def testbed():
    return experiment.load_testbed()


def test_shipped_classifier_reproduces_its_recorded_accuracy():
    classifier, record = weights.load_weights(DigitsCNN, "classifier")
    images, labels = data.load_digits_tensors()
    _, test_idx = data.train_test_split(len(labels), seed=0)
    with torch.no_grad():
        accuracy = (classifier(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    assert record["classifier"]["test_count"] == len(test_idx)
    assert accuracy == pytest.approx(record["classifier"]["test_accuracy"], abs=0.003)
    assert accuracy > 0.95


def test_critic_scores_real_digits_above_degraded_ones(testbed):
    _, scorer = testbed
    images, labels = data.load_digits_tensors()
    x = images[:200]
    g = torch.Generator().manual_seed(0)
    real = scorer.score_tensors(x, labels[:200]).iq.mean()
    for k, kind in enumerate(KINDS):
        worse = degrade(x, torch.ones(200), torch.full((200,), k), g)
        assert scorer.score_tensors(worse, labels[:200]).iq.mean() < real - 0.2, kind


def test_scorer_interface_matches_tensor_path(testbed):
    _, scorer = testbed
    images, labels = data.load_digits_tensors()
    direct = scorer.score_tensors(images[:6], labels[:6])
    via_comfy = scorer.score(data.to_comfy_image(images[:6]), [data.class_prompt(i) for i in labels[:6]])
    assert torch.allclose(direct.jaq, via_comfy.jaq, atol=1e-4)
    assert torch.allclose(direct.jaq, direct.tc + 2 * direct.iq)
    with pytest.raises(ValueError, match="exactly one digit"):
        scorer.score(data.to_comfy_image(images[:1]), ["a cat"])


def test_frechet_distance_is_zero_on_itself_and_grows_with_a_shift():
    f = torch.randn(400, 5, generator=torch.Generator().manual_seed(0)).double()
    stats = gaussian_stats(f)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)
    shifted = gaussian_stats(f + 1.0)
    assert frechet_distance(stats, shifted) == pytest.approx(5.0, rel=1e-6)


def test_missing_and_corrupt_weights_name_retrain(tmp_path):
    with pytest.raises(weights.WeightsError, match="--retrain"):
        weights.load_weights(DigitsUNet, "student_lcm", folder=str(tmp_path))
    folder = tmp_path / "w"
    shutil.copytree(weights.WEIGHTS_DIR, folder)
    path = folder / "student_lcm.safetensors"
    os.chmod(path, 0o644)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(weights.WeightsError, match="corrupt.*--retrain"):
        weights.load_weights(DigitsUNet, "student_lcm", folder=str(folder))
    (folder / "MANIFEST.json").unlink()
    path.write_bytes(bytes(blob[:1000]))  # truncated, and no manifest to catch it
    with pytest.raises(weights.WeightsError, match="cannot be loaded.*--retrain"):
        weights.load_weights(DigitsUNet, "student_lcm", folder=str(folder))


def test_unsupported_steps_and_bits_are_refused(testbed):
    unet, _ = testbed
    for steps in (0, 9, 50):
        with pytest.raises(ValueError, match="1-8 LCM steps"):
            generate.check_steps(steps)
    for bits in ("W3A3", "FP8", "int4"):
        with pytest.raises(ValueError, match="unsupported bit width"):
            experiment.quantized_student(unet, bits)
    from comfyui_qsched.testbed.digits import demo
    for argv in (["--steps", "12"], ["--bits", "W2A2"]):
        with pytest.raises(SystemExit) as exit:
            demo.main(argv)
        assert exit.value.code == 2


def test_naive_w4a4_is_measurably_worse_than_full_precision(testbed):
    unet, scorer = testbed
    fid = FeatureFID(scorer)
    fp, _ = experiment.quantized_student(unet, "FP32")
    w4a4, report = experiment.quantized_student(unet, "W4A4")
    assert report.bytes_after < report.bytes_before / 3
    identity = QSchedSchedule.identity(2)
    cells = {name: experiment.evaluate_cell(model, 2, identity, scorer, {"fid": fid}, seed=7, count=200)
             for name, model in (("fp", fp), ("w4a4", w4a4))}
    assert cells["fp"]["tc"] > 0.9
    assert cells["w4a4"]["jaq"] < cells["fp"]["jaq"] - 0.1
    assert cells["w4a4"]["fid"] > cells["fp"]["fid"]


def test_search_never_returns_worse_than_identity_on_its_calibration_set(testbed):
    unet, scorer = testbed
    w4a4, _ = experiment.quantized_student(unet, "W4A4")
    result = experiment.search_schedule(w4a4, 2, scorer, "paper_grid", grid_points=3)
    assert result.best_score >= result.identity_score
    calibration = experiment.Calibration(w4a4, 2, scorer)
    pairs = list(range(experiment.CALIBRATION_PAIRS))
    rescored_best = sum(calibration(result.best, pairs)) / len(pairs)
    rescored_identity = sum(calibration(QSchedSchedule.identity(2), pairs)) / len(pairs)
    assert rescored_best == pytest.approx(result.best_score, abs=1e-5)  # fixed noise: scores are reproducible
    assert rescored_identity == pytest.approx(result.identity_score, abs=1e-5)
    assert math.isfinite(result.best_score)


def test_demo_runs_end_to_end_on_reduced_settings(tmp_path, capsys):
    from comfyui_qsched.testbed.digits import demo
    out = tmp_path / "demo"
    assert demo.main(["--steps", "2", "--samples", "40", "--grid-points", "3", "--refine-evaluations", "8",
                      "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "W4A4 + Q-Sched" in printed and "FP32" in printed and "W4A4 + reference+offset" in printed
    assert "W4A4-g16-r16 GPTQ + map (11.3 b/w)" in printed
    from PIL import Image
    assert Image.open(out / "digits_grid.png").size[0] > 600
    assert Image.open(out / "search_surface.png").size == (768, 384)


def test_compare_folders_sees_identical_weights_as_identical_and_a_change_as_a_change(tmp_path):
    from comfyui_qsched.testbed.digits.train import compare_folders
    folder = tmp_path / "w"
    shutil.copytree(weights.WEIGHTS_DIR, folder)
    same = compare_folders(weights.WEIGHTS_DIR, str(folder), "cpu", seeds=2, count=20)
    assert same["shipped"] == same["other"]
    student, record = weights.load_weights(DigitsUNet, "student_lcm", folder=str(folder))
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.mul_(1.1)
    os.chmod(folder, 0o755)
    weights.save_weights(student, "student_lcm", record, folder=str(folder))
    changed = compare_folders(weights.WEIGHTS_DIR, str(folder), "cpu", seeds=2, count=20)
    assert changed["shipped"]["teacher_euler50_cfg2"] == changed["other"]["teacher_euler50_cfg2"]
    assert changed["shipped"]["student_lcm4"]["fid"] != changed["other"]["student_lcm4"]["fid"]


def test_pixel_fid_is_zero_on_real_digits_and_grows_with_damage():
    from comfyui_qsched.testbed.digits.pixel_fid import PixelFID, real_pixels
    fid = PixelFID()
    images, _ = data.load_digits_tensors()
    pooled = real_pixels()
    assert pooled.shape == (1797, 64)
    # 2x2 means of the 16x16 training images (an independent reshape-and-mean, not avg_pool2d)
    torch.testing.assert_close(pooled[5], images[5, 0].reshape(8, 2, 8, 2).mean(dim=(1, 3)).reshape(64))
    assert fid(images) == pytest.approx(0.0, abs=1e-6)
    half = fid(images[:700])                     # a real subsample: only the small-sample bias
    g = torch.Generator().manual_seed(0)
    damaged = fid(degrade(images, torch.full((1797,), 0.5), torch.zeros(1797, dtype=torch.long), g))
    shifted = fid((images - 0.2).clamp(-1, 1))
    assert half < 0.2 * damaged and half < 0.2 * shifted


def test_reference_calibration_brings_held_out_samples_closer_to_fp(testbed):
    """Reduced digits-reference run: the per-step refinement with offsets, fitted on its own noise, moves fresh
    samples of W4A4 (2 steps) closer to the FP model's samples from the same noise, and their mean brightness
    towards FP's, more than the grid's coefficients alone."""
    from comfyui_qsched.testbed.digits.reference_experiment import ReferenceCalibration, refine_options
    unet, _ = testbed
    fp, _ = experiment.quantized_student(unet, "FP32")
    w4a4, _ = experiment.quantized_student(unet, "W4A4")
    result = ReferenceCalibration(fp, w4a4, 2, pairs=20).search(refine=refine_options(40), grid_points=3)
    grid = QSchedSchedule.from_dict(result.refinement["start"])
    assert result.best.offset is not None and result.best_score > result.refinement["start_score"]
    labels = torch.arange(200) % 10
    target = generate.generate(fp, labels, 2, seed=11)
    error = {name: (generate.generate(w4a4, labels, 2, seed=11, schedule=s) - target).pow(2).mean().item()
             for name, s in (("naive", QSchedSchedule.identity(2)), ("grid", grid), ("refined", result.best))}
    assert error["refined"] < error["grid"] <= error["naive"]
    mean = {name: generate.generate(w4a4, labels, 2, seed=11, schedule=s).mean().item()
            for name, s in (("naive", QSchedSchedule.identity(2)), ("refined", result.best))}
    assert abs(mean["refined"] - target.mean().item()) < abs(mean["naive"] - target.mean().item())


def test_digits_reference_refuses_fewer_than_two_calibration_pairs(capsys):
    from comfyui_qsched.testbed.digits.reference_experiment import main
    with pytest.raises(SystemExit):
        main(["--reference-pairs", "1", "--out", "/nonexistent/never-written.json"])
    err = capsys.readouterr().err
    assert "--reference-pairs" in err and "1 is out of range" in err and ">= 2" in err


def test_reference_features_objective_scores_distance_of_classifier_features(testbed):
    """The testbed's reference_clip analogue: 0 for samples identical to the FP model's, minus the mean cosine
    distance of the two samples' classifier features otherwise (computed here from the scorer directly)."""
    from comfyui_qsched.testbed.digits.reference_experiment import ReferenceCalibration
    unet, scorer = testbed
    fp, _ = experiment.quantized_student(unet, "FP32")
    w4a4, _ = experiment.quantized_student(unet, "W4A4")
    identity = QSchedSchedule.identity(2)
    same = ReferenceCalibration(fp, fp, 2, scorer, objective="reference_features", pairs=6)
    assert same(identity, list(range(6))) == pytest.approx([0.0] * 6, abs=1e-6)
    calibration = ReferenceCalibration(fp, w4a4, 2, scorer, objective="reference_features", pairs=6)
    x = generate.generate(w4a4, calibration.labels, 2, 0, noise=calibration.noise)
    a, b = scorer.features(x), scorer.features(calibration.reference)
    expected = -(1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))
    assert calibration(identity, list(range(6))) == pytest.approx(expected.tolist(), abs=1e-5)
    assert max(expected.tolist()) < 0
    with pytest.raises(ValueError, match="reference_features needs the testbed scorer"):
        ReferenceCalibration(fp, w4a4, 2, objective="reference_features")
