"""Each setting is defined once and every consumer reads it from there: the JAQ weight k and the scorer's choices
(scoring/options.py), the sampler names (samplers/schedule.py SAMPLER_NAMES), the few-step schedule names
(samplers/sigmas.py SCHEDULER_KINDS), the folder names (folders.py), the preset summary (calibration/presets.py)
and (x - D) / sigma (samplers/k_qsched.py to_d). The last tests read the ComfyUI consumers (nodes, adapter)."""
import ast
import inspect
import os

import pytest
import torch

from comfyui_qsched import folders
from comfyui_qsched.calibration import ptqd, presets
from comfyui_qsched.calibration.run import CalibrationConfig
from comfyui_qsched.comfy_adapter import cli
from comfyui_qsched.quant import options as quant_options
from comfyui_qsched.samplers import SAMPLERS, k_qsched
from comfyui_qsched.samplers.schedule import SAMPLER_NAMES
from comfyui_qsched.samplers.sigmas import SCHEDULER_KINDS
from comfyui_qsched.scoring import JAQOptions, clip_scorer, load_scorer
from comfyui_qsched.scoring.checkpoints import WHERE_TO_PUT
from comfyui_qsched.scoring.options import DEFAULT_K, OPTION, SCORER_OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _float_literals(relative_path):
    with open(os.path.join(ROOT, relative_path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and type(node.value) is float]


def test_the_jaq_weight_k_is_read_from_the_scorer_options():
    assert JAQOptions().k == DEFAULT_K == OPTION["k"].default
    assert inspect.signature(load_scorer).parameters["k"].default == DEFAULT_K
    scorer_k = next(a for a in cli.parser()._actions if a.dest == "scorer_k")
    assert scorer_k.default == DEFAULT_K
    for consumer in ("scoring/jaq.py", "comfy_adapter/cli.py", "nodes/scoring.py"):
        assert DEFAULT_K not in _float_literals(consumer), f"{consumer} writes k's value again"


def test_the_scorer_defaults_are_the_options_defaults():
    load = inspect.signature(load_scorer).parameters
    clip = inspect.signature(clip_scorer).parameters
    for name in ("variant", "tc_transform", "k_weights", "clip_score_convention"):
        if name in load:
            assert load[name].default == OPTION[name].default, name
    assert load["iqa_pairs"].default == clip["iqa_pairs"].default == (OPTION["iqa_prompt_pair"].default,)
    assert clip["clip_score_convention"].default == OPTION["clip_score_convention"].default
    assert (JAQOptions().tc_transform, JAQOptions().k_weights) == (OPTION["tc_transform"].default,
                                                                   OPTION["k_weights"].default)
    for option in SCORER_OPTIONS:
        assert option.number() or option.default in option.choices


def test_the_sampler_names_are_read_from_one_list():
    assert tuple(SAMPLERS) == SAMPLER_NAMES
    assert all(SAMPLERS[name].function is getattr(k_qsched, f"sample_{name}") for name in SAMPLER_NAMES)
    assert CalibrationConfig.__dataclass_fields__["sampler_name"].metadata["setting"].choices is SAMPLER_NAMES
    sampler = next(a for a in cli.parser()._actions if "--sampler" in a.option_strings)
    assert tuple(sampler.choices) == SAMPLER_NAMES


def test_the_folder_names_are_read_from_folders_py():
    assert quant_options.CACHE_FOLDER is folders.QUANT_CACHE
    assert f"models/{folders.SCORERS}/" in WHERE_TO_PUT
    helps = {a.dest: a.help for a in cli.parser()._actions}
    assert helps["preset_folder"].endswith(folders.PRESETS) and helps["runs_folder"].endswith(folders.RUNS)
    assert len({folders.PRESETS, folders.RUNS, folders.SCORERS, folders.QUANT_CACHE}) == 4


def test_x_minus_d_over_sigma_is_the_samplers_to_d():
    x, denoised = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    sigma = torch.tensor([14.6, 2.0, 0.3])
    by_hand = (x - denoised) / sigma.reshape(3, 1, 1, 1)
    assert torch.equal(ptqd.eps_from_denoised(x, sigma, denoised), by_hand)
    assert torch.equal(k_qsched.to_d(x, sigma, denoised), by_hand)
    assert torch.equal(ptqd.eps_from_denoised(x, 0.3, denoised), (x - denoised) / torch.tensor(0.3))


# --- the ComfyUI consumers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfy_side(comfyui_dir):
    from comfyui_qsched.comfy_adapter import calibration, sampling
    from comfyui_qsched.nodes import routes
    from comfyui_qsched.nodes import sampling as sampling_nodes
    from comfyui_qsched.nodes import scoring as scoring_nodes
    return calibration, sampling, routes, sampling_nodes, scoring_nodes


def _inputs(node):
    schema = node.define_schema()
    return {item.id: item for item in schema.inputs}


def test_the_nodes_read_the_scorer_options_sampler_names_and_schedules(comfy_side):
    calibration, sampling, _, sampling_nodes, scoring_nodes = comfy_side
    loader = _inputs(scoring_nodes.QSchedScorerLoader)
    for option in SCORER_OPTIONS:
        item = loader[option.name]
        assert item.default == option.default and item.tooltip == option.help
        if not option.number():
            assert tuple(item.options) == option.choices
        else:
            assert (item.min, item.max, item.step) == (option.minimum, option.maximum, option.step)
    assert tuple(_inputs(sampling_nodes.QSchedKSampler)["sampler_name"].options) == SAMPLER_NAMES
    assert list(sampling.FEW_STEP_SCHEDULERS) == list(SCHEDULER_KINDS)
    assert tuple(_inputs(sampling_nodes.QSchedFewStepSigmas)["scheduler"].options) == tuple(SCHEDULER_KINDS)
    assert sampling.SCHEDULERS[-len(SCHEDULER_KINDS):] == list(SCHEDULER_KINDS)
    assert (calibration.PRESET_FOLDER_NAME, calibration.RUNS_FOLDER_NAME) == (folders.PRESETS, folders.RUNS)
    assert scoring_nodes.SCORER_FOLDER is folders.SCORERS


def test_the_preset_lists_show_the_one_preset_summary(comfy_side, tmp_path):
    routes = comfy_side[2]
    from comfyui_qsched.samplers import QSchedSchedule
    preset = presets.make_preset(QSchedSchedule.constant(4, 0.95, 1.05, sampler="lcm"), model_name="tiny",
                                 scorer="clip.safetensors", scorer_k=2.5, identity_score=0.3, best_score=0.4)
    presets.save_preset(str(tmp_path), "one", preset)
    loaded = presets.load_preset(str(tmp_path), "one")
    [entry] = routes.list_preset_entries(lambda: [str(tmp_path)])["presets"]
    status, single = routes.read_one_preset(lambda: [str(tmp_path)], "one")
    assert status == 200 and entry["summary"] == single["summary"] == presets.summary(loaded)
    assert (entry["summary"]["scorer"], entry["summary"]["k"], entry["summary"]["best_score"]) == \
        ("clip.safetensors", 2.5, 0.4)
