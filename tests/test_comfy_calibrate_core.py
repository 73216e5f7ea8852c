"""The node and the command line share one calibration core in real ComfyUI: every setting they both have agrees
(default, bounds, choices), the command line's ComfyUI side imports neither ComfyUI's server nor its `nodes` nor
the pack's nodes, and the shared adapter refuses a scheduler ComfyUI does not have before any image.

Needs COMFYUI_DIR.
"""
import os
import subprocess
import sys

import pytest

from comfy_fixtures import combo_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def node_inputs(comfyui_dir):
    from comfyui_qsched.nodes.calibrate import QSchedCalibrate
    spec = QSchedCalibrate.INPUT_TYPES()
    return {**spec["required"], **spec["optional"]}


def _accepts(required, flag, value):
    from comfyui_qsched.comfy_adapter import cli
    try:
        cli.parser().parse_args([*required, flag, str(value)])
    except SystemExit:
        return False
    return True


def test_node_and_command_line_agree_on_every_setting(node_inputs, cli_files):
    """A setting on both: the same default, the node's min/max are exactly what the command line takes (and one
    step beyond is refused by both), the same choices. Settings only one side has are listed explicitly."""
    from comfyui_qsched.comfy_adapter import cli
    from comfyui_qsched.calibration.run import SCHEDULERS as HOST, CalibrationConfig, ConfigError
    from comfyui_qsched.comfy_adapter.sampling import SCHEDULERS
    flags = cli.config_flags()
    actions = {action.dest: action for action in cli.parser()._actions}
    node_only, cli_only = [], []
    for name, default, setting in CalibrationConfig.settings():
        on_node, on_cli = name in node_inputs, name in flags
        if not (on_node and on_cli):
            (node_only if on_node else cli_only).append(name)
            continue
        kind, options = node_inputs[name]
        flag, dest = flags[name]
        assert options["default"] == actions[dest].default == default, name
        choices = combo_options(node_inputs[name])
        if choices is not None:
            cli_choices = actions[dest].choices
            assert choices == (list(SCHEDULERS) if setting.choices == HOST else list(cli_choices)), name
            continue
        assert kind == {int: "INT", float: "FLOAT", str: "STRING"}[type(default)], name
        if "min" in options:
            step = options.get("step", 1) if kind == "INT" else 1e-6
            for edge, beyond in ((options["min"], options["min"] - step), (options["max"], options["max"] + step)):
                assert _accepts(cli_files, flag, edge) and not _accepts(cli_files, flag, beyond), (name, edge, beyond)
                with pytest.raises(ConfigError, match=name):
                    CalibrationConfig(**{name: type(default)(beyond)})
        else:
            assert setting.minimum is None and setting.maximum is None, name
    assert node_only == ["prompts"] and cli_only == []     # the command line reads the prompts from a file
    # The models are inputs, not settings: the FP model is a link on the node, a checkpoint on the command line
    # (or --fp-control: the checkpoint without --quant); the scorer is optional on both (reference_latent and
    # reference_image need none).
    assert "reference_model" in node_inputs and {"reference_model", "fp_control"} <= set(actions)
    from comfyui_qsched.nodes.calibrate import QSchedCalibrate
    assert "scorer" in QSchedCalibrate.INPUT_TYPES()["optional"] and actions["scorer"].required is False


def test_the_command_lines_comfyui_side_imports_no_server_and_no_nodes(comfyui_dir):
    code = ("import sys, qsched\n"
            "from comfyui_qsched.comfy_adapter import cli\n"
            f"cli._import_comfyui({comfyui_dir!r}, False)\n"
            "import comfyui_qsched.comfy_adapter.calibration, comfyui_qsched.comfy_adapter.loading\n"
            "import comfyui_qsched.scoring\n"
            "assert 'comfy.sd' in sys.modules\n"
            "print([m for m in sys.modules if m in ('server', 'nodes', 'execution', 'main') "
            "or m.startswith('comfyui_qsched.nodes')])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_an_unknown_scheduler_is_refused_before_any_image(comfyui_dir):
    from comfyui_qsched.calibration.run import CalibrationConfig, ConfigError
    from comfyui_qsched.comfy_adapter.calibration import calibrate

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the scheduler was checked")

    with pytest.raises(ConfigError, match="scheduler is 'no_such'"):
        calibrate(CalibrationConfig(scheduler="no_such"), Untouchable(), Untouchable(), Untouchable(), Untouchable())


def test_the_node_refuses_settings_that_cannot_work_together_when_the_prompt_is_queued(comfyui_dir):
    from comfyui_qsched.nodes.calibrate import QSchedCalibrate
    check = QSchedCalibrate.validate_inputs
    assert check("a\nb") is True
    assert check("", c_min=1.0, c_max=1.0) == "c_min (1.0) must be below c_max (1.0)"
    assert check("a\nb\nc", n_prompts=4) == "n_prompts is 4 but there are only 3 prompts"
    assert check("", quant="W4A8-g128-g64").startswith("quant:")
    assert "path separator" in check("", preset_name="../elsewhere")
    assert check("", c_min=0.01) == "c_min is 0.01: give a value from 0.05 to 1.0"   # ComfyUI's range check is off
    assert check(None, quant="W4A8-g128-g64") is True    # a linked input: everything is checked when it runs
    from comfyui_qsched.nodes.ptqd import QSchedPTQDCorrection  # shares the settings and their check
    assert QSchedPTQDCorrection.validate_inputs("a", n_prompts=2) == "n_prompts is 2 but there are only 1 prompts"
    assert "path separator" in QSchedPTQDCorrection.validate_inputs("a", preset_name="a/b")


def test_progress_reaches_comfyuis_progress_registry_through_the_v3_api(comfyui_dir):
    """What the calibrate node reports lands in the running prompt's progress registry, which sends progress_state
    (the V3 API's synchronous form on 0.33; 0.3.64 has only the asynchronous one)."""
    from comfy_execution.progress import get_progress_state, reset_progress_state
    from comfyui_qsched.comfy_adapter.comfy_compat import report_progress

    class Prompt:  # what the registry asks of the running prompt when it reports
        def get_display_node_id(self, node_id):
            return node_id

        def get_parent_node_id(self, node_id):
            return None

        def get_real_node_id(self, node_id):
            return node_id

    reset_progress_state("qsched-progress-test", Prompt())
    report_progress(3, 12, "7")
    report_progress(5, 12, 7)
    report_progress(1, 2, None)       # outside a prompt (node called directly): nothing to report to
    nodes = get_progress_state().nodes
    assert set(nodes) == {"7"} and (nodes["7"]["value"], nodes["7"]["max"]) == (5, 12)
    assert nodes["7"]["state"].value == "running"
