"""The calibration core without ComfyUI: CalibrationConfig checks every setting, the command line's arguments are
derived from it (same defaults, bounds and choices), the run-log key and preset record come from it, and
run(config, generate, scorer) calibrates, writes the preset and resumes. Importing the command line imports
neither ComfyUI's server nor any node module."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from comfyui_qsched.comfy_adapter import cli
from comfyui_qsched.calibration.reference import ReferenceSampling
from comfyui_qsched.calibration.run import SCHEDULERS, CalibrationConfig, ConfigError, run
from comfyui_qsched.calibration.runlog import settings_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Parsing checks that the files exist (nothing reads them here): this file stands for both.
REQUIRED = ["--checkpoint", __file__, "--scorer", __file__]


def test_defaults_are_a_valid_config_and_every_bound_is_enforced_by_name():
    CalibrationConfig()   # every default passes the checks
    for name, default, setting in CalibrationConfig.settings():
        assert setting.help
        if setting.minimum is not None and setting.minimum > 0 and isinstance(default, (int, float)):
            below = type(default)(setting.minimum) - (1 if isinstance(default, int) else 0.001 * setting.minimum)
            with pytest.raises(ConfigError, match=f"^{name} is"):
                CalibrationConfig(**{name: below})
        if setting.maximum is not None and isinstance(default, (int, float)):
            above = type(default)(setting.maximum) + (1 if isinstance(default, int) else 0.001 * setting.maximum)
            with pytest.raises(ConfigError, match=f"^{name} is"):
                CalibrationConfig(**{name: above})


@pytest.mark.parametrize("changes,message", [
    ({"steps": 0}, "steps is 0"), ({"steps": 1001}, "steps is 1001"), ({"steps": 4.0}, "steps must be an integer"),
    ({"steps": True}, "steps must be an integer"), ({"cfg": float("nan")}, "cfg must be a finite number"),
    ({"width": 500}, "width is 500: give a multiple of 8"), ({"sampler_name": "dpmpp"}, "sampler_name is 'dpmpp'"),
    ({"strategy": "random"}, "strategy is 'random'"), ({"objective": "fid"}, "objective is 'fid'"),
    ({"c_min": 0.9, "c_max": 1.0}, None), ({"c_min": 1.0, "c_max": 1.0}, "c_min .* must be below c_max"),
    ({"quant": "W4A8-g128-g64"}, "quant:"), ({"preset_name": "../x"}, "path separator"),
    ({"batch_size": 0}, "batch_size is 0"), ({"holdout": 0.9}, "holdout is 0.9"), ({"prompts": 3}, "text"),
    ({"objective": "reference_fid"}, "objective is 'reference_fid'"), ({"refine": "per_pixel"}, "refine is 'per_pixel'"),
    ({"reference_weight": -0.5}, "reference_weight is -0.5"), ({"refine_evaluations": -1}, "refine_evaluations is -1"),
])
def test_bad_settings_are_refused_naming_the_setting(changes, message):
    if message is None:
        CalibrationConfig(**changes)
        return
    with pytest.raises(ValueError, match=message):
        CalibrationConfig(**changes)


def test_values_are_normalised_where_lossless():
    config = CalibrationConfig(cfg=2, quant="w4a8", c_min=1)
    assert config.cfg == 2.0 and isinstance(config.cfg, float) and config.quant == "W4A8" and config.c_min == 1.0


def test_prompt_list_takes_the_first_n_and_refuses_more_than_there_are():
    assert CalibrationConfig(prompts="a\n\nb\nc\n", n_prompts=2).prompt_list() == ["a", "b"]
    assert len(CalibrationConfig().prompt_list()) == 20
    with pytest.raises(ConfigError, match="n_prompts is 4 but there are only 3 prompts"):
        CalibrationConfig(prompts="a\nb\nc", n_prompts=4).prompt_list()


def _parse(*argv):
    return cli.parser().parse_args([*REQUIRED, *argv])


def _refused(*argv):
    try:
        _parse(*argv)
    except SystemExit:
        return True
    return False


def test_the_command_line_has_every_config_setting_with_its_default_bounds_and_choices():
    """One definition: for each setting the command line takes, its default, its bounds (the extreme values are
    taken, one step beyond is refused) and its choices are the config's."""
    flags = cli.config_flags()
    assert set(flags) == {name for name, _, s in CalibrationConfig.settings() if s.cli is not None}
    assert "prompts" not in flags            # the prompts come from --prompts-file
    defaults = _parse()
    actions = {action.dest: action for action in cli.parser()._actions}
    for name, default, setting in CalibrationConfig.settings():
        if name not in flags:
            continue
        flag, dest = flags[name]
        assert getattr(defaults, dest) == default, name
        if isinstance(setting.choices, tuple):
            assert tuple(actions[dest].choices) == setting.choices, name
            assert not _refused(flag, setting.choices[-1]) and _refused(flag, "no-such-choice"), name
        if setting.minimum is not None:
            unit = (setting.step or 1) if isinstance(default, int) else 1e-6
            assert not _refused(flag, str(setting.minimum)) and _refused(flag, str(setting.minimum - unit)), name
            assert not _refused(flag, str(setting.maximum)) and _refused(flag, str(setting.maximum + unit)), name
    config = cli.config_of(_parse("--steps", "6", "--sampler", "tcd", "--quant", "w8a8", "--batch-size", "3"))
    assert (config.steps, config.sampler_name, config.quant, config.batch_size) == (6, "tcd", "W8A8", 3)


def test_quantized_loading_options_come_from_the_loader_definitions():
    from comfyui_qsched.quant import BACKENDS
    from comfyui_qsched.quant.registry import DEFAULT_BACKEND
    from comfyui_qsched.quant.options import CACHE_CHOICES
    actions = {action.dest: action for action in cli.parser()._actions}
    assert tuple(actions["backend"].choices) == tuple(BACKENDS) and actions["backend"].default == DEFAULT_BACKEND
    assert tuple(actions["quant_cache"].choices) == CACHE_CHOICES and actions["layer_policy"].default == ""


def test_importing_the_command_line_imports_no_node_module_and_no_server():
    code = ("import sys, qsched; import comfyui_qsched.comfy_adapter.cli; "
            "print([m for m in sys.modules if m in ('server', 'nodes', 'execution') or m.startswith('comfy') "
            "and not m.startswith('comfyui_qsched') or m.startswith('comfyui_qsched.nodes')])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_run_log_key_is_the_settings_that_decide_a_score():
    """Written out by hand: strategy, budget and batch size do not key the log (a rerun with another reuses every
    image); everything that changes an image or its score does."""
    config = CalibrationConfig(sampler_name="tcd", scheduler="normal", steps=3, cfg=2.0, seed=9, width=128,
                               height=256, objective="iq", quant="W4A8", holdout=0.5, strategy="bayes",
                               budget_images=40, batch_size=2)
    keyed = config.run_log_settings(model_hash="m", prompts_hash="p", scorer="s")
    assert keyed == {"model_hash": "m", "prompts_hash": "p", "scorer": "s", "sampler": "tcd", "scheduler": "normal",
                     "steps": 3, "cfg": 2.0, "seed": 9, "width": 128, "height": 256, "objective": "iq",
                     "quant": "W4A8", "holdout": 0.5}
    other = CalibrationConfig(sampler_name="tcd", scheduler="normal", steps=3, cfg=2.0, seed=9, width=128,
                              height=256, objective="iq", quant="W4A8", holdout=0.5)
    assert settings_hash(other.run_log_settings(model_hash="m", prompts_hash="p", scorer="s")) == settings_hash(keyed)
    assert CalibrationConfig().run_log_settings(model_hash="m", prompts_hash="p", scorer="s")["quant"] is None


class Scorer:
    """jaq = mean pixel (the fake generator paints c_x start into the image), as the real scorer's result."""

    def describe(self):
        return "mean pixel"

    def score(self, images, prompts):
        level = images.mean(dim=(1, 2, 3))
        return SimpleNamespace(jaq=level, tc=level, iq=level)


def _generator(calls):
    def generate(items):
        calls.append(len(items))
        return torch.stack([torch.full((4, 4, 3), schedule.c_x[0] / 2 + index / 1000) for schedule, index in items])
    return generate


def test_run_calibrates_writes_the_preset_and_resumes(tmp_path):
    config = CalibrationConfig(strategy="paper_grid", prompts="a\nb\nc\nd", budget_images=0, batch_size=8,
                               c_min=0.8, c_max=1.2, preset_name="plain", quant="W8A8", holdout=0.25)
    calls = []
    first = run(config, _generator(calls), Scorer(), model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                runs_folder=tmp_path / "runs")
    assert first.search.best.c_x[0] == pytest.approx(1.2)             # brightest wins
    assert first.path == str(tmp_path / "plain.json") and first.preset_name == "plain"
    preset = json.loads((tmp_path / "plain.json").read_text())
    assert preset["model"] == {"name": "Toy-ffffffff", "sha256": "f" * 64, "family": "Toy"}
    assert preset["quant"] == "W8A8" and preset["n_prompts"] == 4
    ran = config.resolved(reference=False)            # objective auto without the FP model: jaq, recorded as such
    assert preset["search"]["objective"] == ran.objective == "jaq" and first.summary()["objective"] == "jaq"
    assert {k: preset["search"][k] for k in ran.search_record()} == json.loads(json.dumps(ran.search_record()))
    assert max(calls) <= 8 and sum(calls) == first.search.images_generated + first.report.images
    summary = first.summary()
    json.dumps(summary)
    assert summary["preset"] == "plain" and summary["preset_path"] == first.path
    assert summary["better_than_identity"] == summary["heldout"]["verdict"] and summary["failures"] == 0
    calls.clear()
    again = run(config, _generator(calls), Scorer(), model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                runs_folder=tmp_path / "runs")
    assert again.search.images_generated == 0 and again.search.best == first.search.best
    assert sum(calls) == again.report.images                          # only the held-out check generates


def test_objective_auto_without_the_fp_model_is_jaq_bit_for_bit(tmp_path):
    """The default objective (auto) with no FP model calibrates exactly as objective jaq did: the same run-log key
    (a jaq run resumes it), the same images, scores and preset."""
    results = {}
    for objective in ("auto", "jaq"):
        config = CalibrationConfig(strategy="paper_grid", prompts="a\nb\nc\nd", objective=objective, preset_name="p")
        calls = []
        results[objective] = run(config, _generator(calls), Scorer(), model_hash="f" * 64, family="Toy",
                                 preset_folder=tmp_path / objective, runs_folder=tmp_path / objective / "runs"), calls
    (auto, auto_calls), (jaq, jaq_calls) = results["auto"], results["jaq"]
    assert auto_calls == jaq_calls and os.listdir(tmp_path / "auto" / "runs") == os.listdir(tmp_path / "jaq" / "runs")
    assert auto.search.per_prompt == jaq.search.per_prompt and auto.search.best == jaq.search.best
    assert {**auto.preset, "created": None} == {**jaq.preset, "created": None}
    summaries = [{k: v for k, v in r.summary().items() if k != "preset_path"} for r in (auto, jaq)]
    assert summaries[0] == summaries[1] and summaries[0]["summary"].startswith("objective: jaq\n")


def test_the_default_preset_name_is_made_safe_from_the_model_name(tmp_path):
    config = CalibrationConfig(strategy="paper_grid", prompts="a\nb", budget_images=4)   # 2 for the search, 2 for the held-out check
    done = run(config, _generator([]), Scorer(), model_hash="0" * 64, family="Toy", preset_folder=tmp_path,
               runs_folder=tmp_path, model_name="sd/v1..5")
    assert os.path.dirname(done.path) == str(tmp_path) and done.preset_name.startswith("sd_v1.5-fp-lcm-4steps")


def test_schedulers_are_the_hosts_choice():
    assert dict((n, s.choices) for n, _, s in CalibrationConfig.settings())["scheduler"] == SCHEDULERS
    assert CalibrationConfig(scheduler="anything").scheduler == "anything"   # the host checks it (ComfyUI's list)


# --- calibration against the full-precision model ---------------------------------------------------------------

@pytest.mark.parametrize("objective,reference,scorer,message", [
    ("reference_latent", False, True, "compares with the full-precision model: connect it as 'reference_model'"),
    ("jaq_reference", False, True, "give --reference-model"),
    ("jaq_reference", True, False, "objective 'jaq_reference' needs a scorer"),
    ("reference_clip", True, False, "needs a scorer"), ("jaq", True, False, "objective 'jaq' needs a scorer"),
    ("reference_latent", True, False, None), ("reference_image", True, False, None), ("jaq", False, True, None),
    ("auto", False, False, "objective 'auto' without the full-precision model is jaq, which needs a scorer"),
    ("auto", True, False, None), ("auto", False, True, None), ("reference_closed_form", True, False, None),
])
def test_the_inputs_an_objective_needs_are_checked(objective, reference, scorer, message):
    config = CalibrationConfig(objective=objective)
    if message is None:
        config.check_inputs(reference=reference, scorer=scorer)
        return
    with pytest.raises(ConfigError, match=message):
        config.check_inputs(reference=reference, scorer=scorer)


def test_reference_settings_key_the_log_and_the_record_only_where_they_apply():
    """Written out by hand: the FP model's hash keys a reference objective's log (its scores compare with it), the
    penalty weight only jaq_reference's; the refinement keys nothing (it scores more schedules, each meaning the
    same) but is recorded."""
    keys = dict(model_hash="m", prompts_hash="p", scorer="s", reference_hash="r")
    combined = CalibrationConfig(objective="jaq_reference", reference_weight=2.5, refine="per_step",
                                 refine_evaluations=5)
    keyed = combined.run_log_settings(**keys)
    assert keyed == {"model_hash": "m", "prompts_hash": "p", "scorer": "s", "sampler": "lcm",
                     "scheduler": "lcm_original", "steps": 4, "cfg": 1.0, "seed": 0, "width": 512, "height": 512,
                     "objective": "jaq_reference", "quant": None, "holdout": 0.25, "reference_weight": 2.5,
                     "reference_model": "r"}
    unrefined = CalibrationConfig(objective="jaq_reference", reference_weight=2.5)
    assert settings_hash(unrefined.run_log_settings(**keys)) == settings_hash(keyed)
    latent = CalibrationConfig(objective="reference_latent", reference_weight=2.5).run_log_settings(**keys)
    assert "reference_weight" not in latent and latent["reference_model"] == "r"
    assert CalibrationConfig().run_log_settings(**keys) == CalibrationConfig().run_log_settings(
        **{**keys, "reference_hash": None})                      # the FP control does not change what a score means
    record = combined.search_record()
    assert (record["objective"], record["reference_weight"], record["refine"], record["refine_evaluations"]) == (
        "jaq_reference", 2.5, "per_step", 5)
    plain = CalibrationConfig(reference_weight=2.5, refine_evaluations=5).search_record()
    assert plain["refine"] == "off" and "reference_weight" not in plain and "refine_evaluations" not in plain


def test_planned_images_count_the_refinement_and_the_fp_control():
    def planned(reference=False, **changes):
        return CalibrationConfig(prompts="a\nb\nc\nd", strategy="paper_grid", **changes).planned_images(reference)
    search_pairs, held_out = 3, 1                         # split_pairs(4, 0.25)
    assert planned(refine="per_step", refine_evaluations=7) - planned() == 7 * search_pairs
    assert planned(refine="per_step") - planned() == 200 * search_pairs           # 0 = the default evaluations
    assert planned(reference=True, objective="jaq") - planned() == 2 * held_out    # winner and identity on the FP
    # no FP control there, but one full-precision reference sample per prompt
    assert planned(reference=True, objective="reference_latent") == planned() + 4
    # auto with the FP model: the closed form, a partial trajectory per step and search pair, winner and identity
    assert planned(reference=True) == planned(objective="reference_closed_form") == (4 + 2) * search_pairs + 2


FP_LEVEL = 0.7        # what the fake FP model paints; the grid's candidates reach 0.6 at most (c_x start 1.2)


def _latent_sampling(calls):
    """The fake quantized model paints c_x[0] / 2 plus the first step's mean offset into a [4, 2, 2] latent; the
    fake FP model paints FP_LEVEL whatever its (identity) schedule; decode spreads a latent over a 4 x 4 image."""
    def sample(items):
        calls.append(("quantized", len(items)))
        return torch.stack([torch.full((4, 2, 2), schedule.c_x[0] / 2 + (
            sum(schedule.offset[0]) / len(schedule.offset[0]) if schedule.offset else 0.0)) for schedule, _ in items])

    def sample_reference(items):
        calls.append(("fp", [index for _, index in items]))
        return torch.full((len(items), 4, 2, 2), FP_LEVEL)

    def decode(latents):
        return latents.mean(dim=1, keepdim=True).repeat(1, 2, 2, 3)[:, :4, :4]
    return ReferenceSampling(sample, sample_reference, decode)


def test_run_calibrates_against_the_fp_model_with_a_per_step_refinement_and_resumes(tmp_path):
    config = CalibrationConfig(strategy="paper_grid", prompts="a\nb\nc\nd", objective="reference_latent",
                               refine="per_step_offset", refine_evaluations=30, preset_name="reference",
                               quant="W4A8", steps=2)
    calls, fp_control = [], []

    def generate(items):
        raise AssertionError("a reference objective samples latents through ReferenceSampling")

    def never(items):
        fp_control.append(items)
        raise AssertionError("no FP control with a reference objective")

    first = run(config, generate, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                runs_folder=tmp_path / "runs", reference=_latent_sampling(calls), reference_hash="r" * 64,
                generate_reference=never, latent_channels=4)
    grid_best = first.search.refinement["start_score"]
    assert grid_best == pytest.approx(-(FP_LEVEL - 0.6) ** 2)        # the grid's best: c_x start 1.2
    assert first.search.best_score > -1e-4 and first.search.best_score > grid_best
    fp_calls = [c[1] for c in calls if c[0] == "fp"]
    assert sorted(i for call in fp_calls for i in call) == [0, 1, 2, 3]   # each FP output sampled once
    summary = first.summary()
    json.dumps(summary)
    assert summary["objective"] == "reference_latent" and summary["refinement"]["form"] == "per_step_offset"
    assert 0 < summary["refinement"]["images"] <= 30 * 3 and "fp_control" not in summary
    preset = json.loads((tmp_path / "reference.json").read_text())
    assert preset["version"] == 2 and preset["scorer"]["name"] == "none"
    assert preset["search"]["reference_model_sha256"] == "r" * 64 and preset["search"]["fp_control"] is False
    assert preset["search"]["refinement"] == summary["refinement"] and preset["search"]["refine_evaluations"] == 30
    assert preset["c_x"] == summary["best"]["c_x"] and preset.get("offset") == summary["best"]["offset"]
    calls.clear()
    again = run(config, generate, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                runs_folder=tmp_path / "runs", reference=_latent_sampling(calls), reference_hash="r" * 64,
                latent_channels=4)
    assert again.search.images_generated == 0 and again.search.best == first.search.best
    other = run(config, generate, None, model_hash="f" * 64, family="Toy", preset_folder=tmp_path,
                runs_folder=tmp_path / "runs", reference=_latent_sampling([]), reference_hash="o" * 64,
                latent_channels=4)
    assert other.search.images_reused == 0                            # another FP model, another log


def test_a_reference_objective_without_the_fp_model_is_refused_before_any_image(tmp_path):
    calls = []
    with pytest.raises(ConfigError, match="full-precision model"):
        run(CalibrationConfig(objective="reference_image", prompts="a\nb"), _generator(calls), Scorer(),
            model_hash="0" * 64, family="Toy", preset_folder=tmp_path, runs_folder=tmp_path)
    assert calls == [] and not os.listdir(tmp_path)


@pytest.mark.parametrize("argv,message", [
    (["--objective", "reference_latent"], "give --reference-model"),
    (["--objective", "jaq"], "needs a scorer"),
    (["--reference-model", "same", "--objective", "reference_latent"], "give --quant too"),
    ([], "objective 'auto' without the full-precision model is jaq, which needs a scorer"),
    (["--quant", "W4A8", "--fp-control"], "objective 'jaq' needs a scorer"),    # the FP control is jaq's
])
def test_the_command_line_refuses_missing_models_before_loading_anything(argv, message, capsys, tmp_path):
    """--comfyui points nowhere: the refusal must come first (loading would fail differently)."""
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"{}")
    with pytest.raises(SystemExit) as exit:
        cli.main(["--checkpoint", str(checkpoint), "--comfyui", str(tmp_path), *argv])
    said = f"{exit.value.code} {capsys.readouterr().err}"     # argparse's error, or SystemExit's message
    assert message in said and "ComfyUI checkout" not in said


def test_auto_with_the_fp_model_needs_no_scorer_on_the_command_line(capsys, tmp_path):
    """The closed form (auto's choice with --reference-model) passes the checks without --scorer: the command goes
    on to look for ComfyUI, which is missing here."""
    from safetensors.torch import save_file
    checkpoint = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(checkpoint))   # a sound header: the command checks it first
    with pytest.raises(SystemExit) as exit:
        cli.main(["--checkpoint", str(checkpoint), "--comfyui", str(tmp_path), "--quant", "W4A8",
                  "--reference-model", "same"])
    assert "calibrate needs a ComfyUI checkout" in f"{exit.value.code} {capsys.readouterr().err}"
