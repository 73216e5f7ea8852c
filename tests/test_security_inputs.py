"""Careless input that used to give silent wrong results, stalls or raw errors (issue 14), property-based:
quantization spec strings, layer-policy rules, CLI arguments and search budgets."""
import contextlib
import copy
import fnmatch
import io
import math
import os
import re
import tracemalloc
from collections import OrderedDict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile_files as hostile
from comfyui_qsched.comfy_adapter import cli
from comfyui_qsched.calibration.search import STRATEGIES, SearchInterrupted, SearchSpace, plan_images, run_search
from comfyui_qsched.quant import LayerPolicy, QuantSpec, QuantSpecError, quantize_module
from comfyui_qsched.samplers.schedule import SAMPLER_NAMES

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- quantization specs ------------------------------------------------------------------------------------

OPTIONS = st.sampled_from(["g128", "g64", "g32", "g3", "g0", "tensor", "token", "foo", "g", "G16", "TENSOR", "",
                           "g" + "9" * 12, "r32", "R8", "r1", "r1024", "r0", "r1025", "r", "r" + "9" * 12])


@SETTINGS
@given(w=st.integers(0, 20), a=st.sampled_from([0, 2, 4, 8, 16, 32]), options=st.lists(OPTIONS, max_size=4),
       separator=st.sampled_from(["-", "_"]), upper=st.booleans())
def test_spec_strings_parse_exactly_or_are_refused(w, a, options, separator, upper):
    text = f"W{w}A{a}" + "".join(separator + option for option in options)
    text = text.upper() if upper else text.lower()
    try:
        spec = QuantSpec.parse(text)
    except QuantSpecError as error:
        assert str(error)
        return
    lowered = [option.lower() for option in options]
    groups = [o for o in lowered if re.fullmatch(r"g[0-9]+", o)]
    granularity = [o for o in lowered if o in ("tensor", "token")]
    ranks = [o for o in lowered if re.fullmatch(r"r[0-9]+", o)]
    assert len(groups) <= 1 and len(granularity) <= 1 and len(ranks) <= 1, \
        "a repeated option kind must be refused, not last-wins"
    assert (spec.w_bits, spec.a_bits) == (w, a)
    assert spec.group_size == (int(groups[0][1:]) if groups else None)
    assert spec.rank == (int(ranks[0][1:]) if ranks else None) and (not ranks or 1 <= spec.rank <= 1024)
    assert not ranks or spec.name.endswith(f"-r{spec.rank}"), "the rank is printed last"
    assert spec.act_granularity == (granularity[0] if granularity else "token")
    assert not (a == 16 and granularity), "weight-only specs have no activation granularity to set"
    assert QuantSpec.parse(spec.name) == spec


@pytest.mark.parametrize("text, message", [("W4A8-g128-g64", "weight group size twice"),
                                           ("W4A8-tensor-token", "activation granularity twice"),
                                           ("W8A8-tensor-tensor", "twice"), ("W4A16-tensor", "weight-only"),
                                           ("W4A8-r16-r32", "low-rank branch rank twice"),
                                           ("W\u0664A8", "cannot parse")])
def test_conflicting_or_meaningless_options_are_refused(text, message):
    with pytest.raises(QuantSpecError, match=message):
        QuantSpec.parse(text)


# --- layer policies ----------------------------------------------------------------------------------------

def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(
        blocks=torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)),
        proj=torch.nn.Linear(8, 8), head=torch.nn.Linear(8, 8)))


LAYERS = ["blocks.0", "blocks.1", "blocks.2", "proj", "head"]
PATTERNS = st.sampled_from(LAYERS + ["blocks.*", "*", "blocks.9", "prj", "block.0", "*.qkv", "head.*"])
PREFIXES = st.sampled_from(["", "diffusion_model.", "model.diffusion_model."])


@SETTINGS
@given(rules=st.lists(st.tuples(PREFIXES, PATTERNS, st.sampled_from(["keep", "W8A8", "W4A16"])), min_size=1,
                      max_size=4))
def test_every_policy_rule_takes_effect_or_the_policy_is_refused(rules):
    text = ", ".join(f"{prefix}{pattern}={action}" for prefix, pattern, action in rules)
    # first matching rule wins (the documented order); a rule written with the model's prefix means the same
    first_match = {name: next((i for i, (_, pattern, _) in enumerate(rules) if fnmatch.fnmatchcase(name, pattern)),
                              None) for name in LAYERS}
    dead = [i for i in range(len(rules)) if i not in first_match.values()]
    net = _net()
    before = copy.deepcopy(net.state_dict())
    try:
        report = quantize_module(net, "W4A8", policy=text)
    except QuantSpecError as error:
        assert dead, f"refused a policy whose every rule decides a layer: {error}"
        for i in dead:
            assert f"'{rules[i][1]}=" in str(error)
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "refused after changing layers"
        return
    assert not dead, f"rules {[text.split(', ')[i] for i in dead]} decided no layer and nothing was said"
    assert report is not None


def test_a_rule_with_the_diffusion_model_prefix_matches_like_one_without():
    plain = LayerPolicy.parse("blocks.1=keep").plan(_net(), "W8A8")
    prefixed = LayerPolicy.parse("diffusion_model.blocks.1=keep").plan(_net(), "W8A8")
    assert [(d.name, d.spec) for d in plain] == [(d.name, d.spec) for d in prefixed]
    assert next(d for d in prefixed if d.name == "blocks.1").spec is None


@pytest.mark.parametrize("policy, message", [("blocks.0=keep, blocks.0=W8A8", "decided by an earlier rule"),
                                             ("bloks.*=keep", "matches no quantizable layer"),
                                             ("*=keep, head=W8A8", "decided by an earlier rule")])
def test_rules_without_effect_are_named(policy, message):
    with pytest.raises(QuantSpecError, match=message):
        quantize_module(_net(), "W4A8", policy=policy)


# --- CLI arguments -----------------------------------------------------------------------------------------

NUMBER_TEXT = st.one_of(st.integers(-10 ** 40, 10 ** 40).map(str), st.floats(allow_nan=True).map(str),
                        st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "", " 4", "4.0", "1_000", "--1",
                                         "\u0664"]),
                        st.text(max_size=6))
OPTIONS_WITH_VALUES = ["--steps", "--budget", "--seed", "--n-prompts", "--width", "--height", "--cfg", "--scorer-k",
                       "--c-min", "--c-max", "--sampler", "--strategy", "--quant", "--objective"]


@SETTINGS
@given(values=st.dictionaries(st.sampled_from(OPTIONS_WITH_VALUES),
                              NUMBER_TEXT | st.sampled_from(["lcm", "euler", "bayes", "paper_grid", "W4A8",
                                                             "W4A8-g128-g64", "dpmpp", "jaq", "W8A8-TENSOR"]),
                              max_size=6))
def test_cli_arguments_parse_to_sane_values_or_exit_with_a_message(cli_files, values):
    argv = list(cli_files)
    for option, value in values.items():
        argv += [f"{option}={value}"]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = cli.parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2
        assert "error: argument --" in errors.getvalue()
        return
    assert args.steps >= 1 and args.budget >= 0 and args.seed >= 0 and args.n_prompts >= 0
    assert args.width % 8 == 0 and args.height % 8 == 0 and args.width > 0 and args.height > 0
    for value in (args.cfg, args.scorer_k, args.c_min, args.c_max):
        assert math.isfinite(value)
    assert args.cfg >= 0 and args.scorer_k >= 0 and args.c_min > 0 and args.c_max > 0
    assert args.sampler in SAMPLER_NAMES and args.strategy in STRATEGIES and args.objective in ("auto", "jaq")
    assert not args.quant or QuantSpec.parse(args.quant).name == args.quant


@pytest.mark.parametrize("argv", [["--n-prompts", "-1"], ["--n-prompts=-1"], ["--steps", "0"], ["--budget", "-5"],
                                  ["--width", "500"], ["--cfg", "nan"], ["--quant", "W4A8-g128-g64"],
                                  ["--sampler", "dpmpp_2m"]])
def test_cli_refuses_values_that_used_to_be_taken(cli_files, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parser().parse_args([*cli_files, *argv])
    assert exit_.value.code == 2 and argv[0].split("=")[0] in capsys.readouterr().err


@pytest.mark.parametrize("n_prompts", [0, 1, 3])
def test_n_prompts_takes_the_first_n_and_never_drops_one(tmp_path, n_prompts):
    (tmp_path / "prompts.txt").write_text("one\ntwo\nthree\n")
    prompts = cli.read_prompts(str(tmp_path / "prompts.txt"), n_prompts)
    assert prompts == ["one", "two", "three"][: n_prompts or 3]
    with pytest.raises(SystemExit, match="only 3 prompts"):
        cli.read_prompts(str(tmp_path / "prompts.txt"), 4)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge-sparse"])
def test_a_prompts_file_that_is_not_a_small_regular_file_is_refused(tmp_path, kind):
    maker = {"fifo": hostile.make_fifo, "dev-zero": hostile.make_dev_zero_link,
             "huge-sparse": hostile.make_huge_sparse}[kind]
    maker(str(tmp_path), "prompts.txt")
    with pytest.raises(SystemExit, match="--prompts-file"):
        cli.read_prompts(str(tmp_path / "prompts.txt"), 0)


# --- huge budgets ------------------------------------------------------------------------------------------

BUDGETS = st.one_of(st.integers(0, 10 ** 6), st.integers(10 ** 6, 10 ** 30), st.just(2 ** 63), st.just(10 ** 100))


@SETTINGS
@given(strategy=st.sampled_from(sorted(STRATEGIES)), budget=BUDGETS, n_prompts=st.integers(1, 25))
def test_any_budget_plans_a_bounded_number_of_images(strategy, budget, n_prompts):
    from comfyui_qsched.calibration.search import MAX_GRID_CANDIDATES
    space = SearchSpace(STRATEGIES[strategy].space, 4, (0.8, 1.2))
    planned = plan_images(strategy, space, n_prompts, budget or None)
    assert isinstance(planned, int) and 0 < planned
    assert planned <= 2 * (MAX_GRID_CANDIDATES + 1) * n_prompts    # grids stop growing; halving spends < 2x


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy=st.sampled_from(["paper_grid", "grid_general", "successive_halving", "racing", "halving_floor"]),
       budget=st.sampled_from([10 ** 9, 10 ** 18, 10 ** 30]), n_prompts=st.integers(1, 3))
def test_a_huge_budget_starts_searching_at_once_in_bounded_memory(strategy, budget, n_prompts):
    evaluated = []

    def evaluate(schedule, prompts):
        evaluated.append(len(prompts))
        return [1.0 - abs(schedule.c_x[0] - 0.9) for _ in prompts]

    tracemalloc.start()
    try:
        with pytest.raises(SearchInterrupted):
            run_search(evaluate, 4, n_prompts, strategy, budget_images=budget, should_stop=lambda: len(evaluated) >= 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(evaluated) == 3
    assert peak < 96 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB to start a search"


def test_explicit_grids_beyond_the_cap_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="the most is"):
        run_search(lambda s, p: [0.0] * len(p), 4, 1, "paper_grid", grid_points=10 ** 6)
