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

from comfyui_qsched.calibration import cli
from comfyui_qsched.calibration.run import SCHEDULERS, CalibrationConfig, ConfigError, run
from comfyui_qsched.calibration.runlog import settings_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ["--checkpoint", "c.safetensors", "--scorer", "s.safetensors"]


def test_defaults_are_a_valid_config_and_every_setting_has_help():
    config = CalibrationConfig()
    assert config.sampler_name == "lcm" and config.steps == 4 and config.batch_size == 16 and config.holdout == 0.25
    for name, default, setting in CalibrationConfig.settings():
        assert setting.help and getattr(config, name) == default


@pytest.mark.parametrize("changes,message", [
    ({"steps": 0}, "steps is 0"), ({"steps": 1001}, "steps is 1001"), ({"steps": 4.0}, "steps must be an integer"),
    ({"steps": True}, "steps must be an integer"), ({"cfg": float("nan")}, "cfg must be a finite number"),
    ({"width": 500}, "width is 500: give a multiple of 8"), ({"sampler_name": "dpmpp"}, "sampler_name is 'dpmpp'"),
    ({"strategy": "random"}, "strategy is 'random'"), ({"objective": "fid"}, "objective is 'fid'"),
    ({"c_min": 0.9, "c_max": 1.0}, None), ({"c_min": 1.0, "c_max": 1.0}, "c_min .* must be below c_max"),
    ({"quant": "W4A8-g128-g64"}, "quant:"), ({"preset_name": "../x"}, "path separator"),
    ({"batch_size": 0}, "batch_size is 0"), ({"holdout": 0.9}, "holdout is 0.9"), ({"prompts": 3}, "text"),
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
    from comfyui_qsched.quant.backends import DEFAULT_BACKEND
    from comfyui_qsched.quant.options import CACHE_CHOICES
    actions = {action.dest: action for action in cli.parser()._actions}
    assert tuple(actions["backend"].choices) == tuple(BACKENDS) and actions["backend"].default == DEFAULT_BACKEND
    assert tuple(actions["quant_cache"].choices) == CACHE_CHOICES and actions["layer_policy"].default == ""


def test_importing_the_command_line_imports_no_node_module_and_no_server():
    code = ("import sys, qsched; import comfyui_qsched.calibration.cli; "
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
    assert {k: preset["search"][k] for k in config.search_record()} == json.loads(json.dumps(config.search_record()))
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


def test_the_default_preset_name_is_made_safe_from_the_model_name(tmp_path):
    config = CalibrationConfig(strategy="paper_grid", prompts="a\nb", budget_images=2)
    done = run(config, _generator([]), Scorer(), model_hash="0" * 64, family="Toy", preset_folder=tmp_path,
               runs_folder=tmp_path, model_name="sd/v1..5")
    assert os.path.dirname(done.path) == str(tmp_path) and done.preset_name.startswith("sd_v1.5-fp-lcm-4steps")


def test_schedulers_are_the_hosts_choice():
    assert dict((n, s.choices) for n, _, s in CalibrationConfig.settings())["scheduler"] == SCHEDULERS
    assert CalibrationConfig(scheduler="anything").scheduler == "anything"   # the host checks it (ComfyUI's list)
