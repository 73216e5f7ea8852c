"""The closed-form correction as a calibration (objective reference_closed_form): no search, the fit on the
search pairs through the host's trajectories, the winner checked on the held-out pairs like a search's, the
preset carrying the offset map and the fits; its settings key the run log and the record only where they apply."""
import json
import os

import pytest
import torch

from comfyui_qsched.calibration.closed_form import apply_correction
from comfyui_qsched.calibration.reference import ReferenceSampling
from comfyui_qsched.calibration.run import CalibrationConfig, ConfigError, run

SIGMA = 2.0
TRUE_MAP = torch.tensor([[[0.1, -0.2], [0.0, 0.3]]] * 2, dtype=torch.float64)


def _data(index):
    g = torch.Generator().manual_seed(index)
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    dq = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    dfp = apply_correction(x, SIGMA, dq, 1.05, 0.9, TRUE_MAP)
    return x, dq, dfp


def _host(calls):
    """One LCM step: the quantized model's final latent is D' of its prompt's (x, D_q) under the schedule; the FP
    model's is D_fp, which the family (c_x 1.05, c_eps 0.9, a 2x2 map) reaches exactly."""
    def corrected(schedule, index):
        x, dq, _ = _data(index)
        grid = torch.tensor(schedule.offset_map[0], dtype=torch.float64) if schedule.offset_map else \
            torch.zeros(2, 1, 1, dtype=torch.float64)
        return apply_correction(x, SIGMA, dq, schedule.c_x[0], schedule.c_eps[0], grid)[0].float()

    def sample(items):
        calls.append(("sample", len(items)))
        return torch.stack([corrected(schedule, index) for schedule, index in items])

    def sample_reference(items):
        return torch.stack([_data(index)[2][0].float() for _, index in items])

    def trajectory(schedule, step, indices):
        calls.append(("trajectory", step, list(indices)))
        data = [_data(i) for i in indices]
        return (torch.cat([d[0] for d in data]), torch.full((len(indices),), SIGMA), torch.cat([d[1] for d in data]),
                torch.cat([d[2] for d in data]))

    return ReferenceSampling(sample, sample_reference, decode=None, trajectory=trajectory)


def test_the_closed_form_calibration_fits_checks_held_out_and_writes_the_map(tmp_path):
    config = CalibrationConfig(prompts="\n".join("abcdefgh"), objective="reference_closed_form", map_size=2,
                               steps=1, preset_name="closed", holdout=0.25)
    calls = []
    result = run(config, None, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                 runs_folder=tmp_path / "runs", reference=_host(calls), reference_hash="r" * 64, latent_channels=2)
    best = result.search.best
    assert best.c_x == pytest.approx((1.05,), abs=1e-6) and best.c_eps == pytest.approx((0.9,), abs=1e-6)
    assert torch.allclose(torch.tensor(best.offset_map[0], dtype=torch.float64), TRUE_MAP, atol=1e-6)
    fitted_on = [c[2] for c in calls if c[0] == "trajectory"]
    assert len(fitted_on) == 1 and len(fitted_on[0]) == 6          # the search pairs only, once per step
    assert result.search.best_score == pytest.approx(0.0, abs=1e-10)
    assert result.search.identity_score < -1e-3
    assert result.report.heldout.verdict == "yes"
    preset = json.loads((tmp_path / "closed.json").read_text())
    assert preset["offset_map"] == [[list(map(list, channel)) for channel in best.offset_map[0]]]
    assert preset["search"]["closed_form"] == "map" and preset["search"]["map_size"] == 2
    assert preset["search"]["closed_form_fits"]["steps"][0]["error_after"] < 1e-12
    assert preset["search"]["run_log"] is None and "refine" in preset["search"]
    assert "strategy" not in preset["search"] and result.summary()["strategy"] == "closed_form"   # nothing searched
    summary = result.summary()
    json.dumps(summary)
    assert summary["best"]["offset_map"] == preset["offset_map"]


def test_the_channel_form_writes_one_offset_per_channel(tmp_path):
    config = CalibrationConfig(prompts="\n".join("abcdefgh"), objective="reference_closed_form",
                               closed_form="channel", steps=1, preset_name="channel")
    result = run(config, None, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                 runs_folder=tmp_path / "runs", reference=_host([]), reference_hash="r" * 64, latent_channels=2)
    assert result.search.best.offset_map is None and len(result.search.best.offset[0]) == 2
    assert result.search.best_score > result.search.identity_score


def test_a_host_without_trajectories_is_refused_naming_the_objective(tmp_path):
    config = CalibrationConfig(prompts="a\nb\nc\nd", objective="reference_closed_form", steps=1)
    host = _host([])
    bare = ReferenceSampling(host.sample, host.sample_reference, None)
    with pytest.raises(ConfigError, match="reference_closed_form"):
        run(config, None, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path, runs_folder=tmp_path,
            reference=bare, reference_hash="r" * 64)


def test_closed_form_settings_apply_only_with_their_objective_and_form():
    plain = CalibrationConfig(objective="reference_latent", map_size=4)
    assert not plain.applies("closed_form") and not plain.applies("map_size")
    assert "closed_form" not in plain.search_record() and "map_size" not in plain.search_record()
    channel = CalibrationConfig(objective="reference_closed_form", closed_form="channel")
    assert channel.applies("closed_form") and not channel.applies("map_size")
    keyed = CalibrationConfig(objective="reference_closed_form").run_log_settings(
        model_hash="m", prompts_hash="p", scorer="none", reference_hash="r")
    assert (keyed["closed_form"], keyed["map_size"], keyed["reference_model"]) == ("map", 8, "r")
    assert CalibrationConfig(objective="reference_closed_form", steps=4, prompts="a\nb\nc\nd").planned_images() == \
        (4 + 2) * 3 + 2 * 1
    with pytest.raises(ConfigError, match="map_size is 0"):
        CalibrationConfig(map_size=0)


def test_the_default_objective_with_the_fp_model_is_the_closed_form(tmp_path):
    """objective auto (the default) with the host's FP sampling fits the closed form, and the preset and summary
    name the objective that ran."""
    config = CalibrationConfig(prompts="\n".join("abcdefgh"), map_size=2, steps=1, preset_name="auto")
    assert config.objective == "auto"
    calls = []
    result = run(config, None, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                 runs_folder=tmp_path / "runs", reference=_host(calls), reference_hash="r" * 64, latent_channels=2)
    best = result.search.best
    assert best.c_x == pytest.approx((1.05,), abs=1e-6) and best.c_eps == pytest.approx((0.9,), abs=1e-6)
    assert torch.allclose(torch.tensor(best.offset_map[0], dtype=torch.float64), TRUE_MAP, atol=1e-6)
    assert [c[0] for c in calls].count("trajectory") == 1
    preset = json.loads((tmp_path / "auto.json").read_text())
    assert preset["search"]["objective"] == "reference_closed_form" and preset["search"]["map_size"] == 2
    assert preset["scorer"]["name"] == "none" and preset["search"]["reference_model_sha256"] == "r" * 64
    summary = result.summary()
    assert summary["objective"] == "reference_closed_form"
    assert summary["summary"].startswith("objective: reference_closed_form\nwinner: closed form (map)")
    # every image counted against budget_images: (1 step + winner + identity) x 6 search pairs, the held-out
    # check's 2 x 2, one FP sample per prompt; a budget below that is refused, whatever the search would need
    assert result.images["total"] == 3 * 6 + 2 * 2 + 8 == result.search.images_generated + 4 + 8
    CalibrationConfig(prompts="\n".join("abcdefgh"), steps=1, budget_images=30).check_before_run(reference=True)
    with pytest.raises(ConfigError, match="budget_images is 29, but the closed form generates 30: 18 on the 6 "):
        CalibrationConfig(prompts="\n".join("abcdefgh"), steps=1, budget_images=29).check_before_run(reference=True)


@pytest.mark.parametrize("objective", ["auto", "reference_closed_form"])
def test_a_refinement_with_the_closed_form_is_refused_before_any_trajectory(tmp_path, objective):
    config = CalibrationConfig(prompts="a\nb\nc\nd", objective=objective, refine="per_step", steps=1)
    calls = []
    with pytest.raises(ConfigError, match="refine is 'per_step', but objective 'reference_closed_form'"):
        run(config, None, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path, runs_folder=tmp_path,
            reference=_host(calls), reference_hash="r" * 64)
    assert calls == [] and not os.listdir(tmp_path)
    if objective == "auto":   # without the FP model auto is jaq, which may refine
        config.check_inputs(reference=False, scorer=True)
