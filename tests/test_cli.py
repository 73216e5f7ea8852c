"""The command line (`python -m qsched <command>`): help that lists and describes every command and option, and
every bad argument refused with one line naming it, before anything is loaded or computed."""
import argparse
import importlib
import subprocess
import sys

import pytest

import qsched
from comfy_fixtures import REPO_ROOT


def run_cli(*argv):
    """`python -m qsched ...` as a user runs it from the pack's folder: (exit code, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-m", "qsched", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("word", ["--help", "-h", "help"])
def test_help_lists_every_command_with_its_description_and_exits_0(word):
    code, out, err = run_cli(word)
    assert code == 0 and err == ""
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.startswith("  ")}
    assert listed == {name: description for name, (_, description) in qsched.COMMANDS.items()}
    assert all(listed.values())


def test_no_command_prints_the_list_as_an_error():
    code, out, err = run_cli()
    assert code == 2 and out == "" and all(name in err for name in qsched.COMMANDS)


def test_an_unknown_command_is_named():
    code, out, err = run_cli("calibrat")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "unknown command 'calibrat'" in err and "calibrate" in err


def command_parser(name, monkeypatch):
    """The argparse parser a command builds, caught as it parses `--help` (without running the command)."""
    module_name, function_name = qsched.COMMANDS[name][0].split(":")
    module = importlib.import_module(f"{qsched.PACKAGE}.{module_name}")
    caught = []
    real_parse = argparse.ArgumentParser.parse_args

    def parse_args(self, *args, **kwargs):
        caught.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(SystemExit):
        getattr(module, function_name)(["--help"])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real_parse)
    return caught[0]


@pytest.mark.parametrize("name", list(qsched.COMMANDS))
def test_every_command_has_a_whole_description_and_help_on_every_option(name, monkeypatch):
    parser = command_parser(name, monkeypatch)
    assert parser.description and parser.description.rstrip().endswith("."), parser.description
    missing = [action.option_strings or action.dest for action in parser._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"{name}: options without help: {missing}"
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["--help"])
    assert exit.value.code == 0


def test_a_command_help_runs_from_the_command_line():
    code, out, err = run_cli("calibrate", "--help")
    assert code == 0 and "--checkpoint" in out and "--prompts-file" in out


def refused(capsys, main, argv):
    """The one stderr line a command refuses argv with (argparse's exit 2)."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2, (exit.value.code, err)
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def demo(monkeypatch):
    """The demo's main, with loading the testbed made an error: every refusal must come before it."""
    from comfyui_qsched.testbed.digits import demo

    def no_loading():
        raise AssertionError("the demo loaded its models before checking its arguments")
    monkeypatch.setattr(demo, "load_testbed", no_loading)
    return demo.main


@pytest.mark.parametrize("argv,message", [
    (["--samples", "-5"], "argument --samples: -5 is out of range"),
    (["--samples", "many"], "argument --samples: 'many' is not an integer"),
    (["--strategy", "nope"], "argument --strategy: invalid choice: 'nope'"),
    (["--bits", "W3A3"], "argument --bits: 'W3A3': choose from"),
    (["--bits", "FP32"], "argument --bits: 'FP32': choose from"),
    (["--steps", "12"], "argument --steps: '12': choose from"),
    (["--grid-points", "1"], "argument --grid-points: 1 is out of range"),
    (["--threads", "0"], "argument --threads: 0 is out of range"),
    (["--out", "/nonexistent-qsched/grid"], "argument --out: /nonexistent-qsched: no such folder"),
])
def test_demo_refuses_bad_arguments_before_loading(demo, capsys, argv, message):
    assert message in refused(capsys, demo, argv)


def test_the_demo_takes_bit_widths_in_any_case(demo):
    with pytest.raises(AssertionError, match="loaded its models"):
        demo(["--bits", "w4a8", "--steps", "2"])


@pytest.fixture
def calibrate(monkeypatch):
    """calibrate's main, with importing ComfyUI (the first loading step) made an error."""
    from comfyui_qsched.comfy_adapter import cli

    def no_loading(*args):
        raise AssertionError("calibrate imported ComfyUI before checking its arguments")
    monkeypatch.setattr(cli, "_import_comfyui", no_loading)
    return cli.main


@pytest.fixture
def checkpoint(tmp_path):
    """A sound (tiny) safetensors file: the command checks the header before it loads anything."""
    import torch
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    return str(path)


def test_calibrate_refuses_a_missing_checkpoint(calibrate, capsys, tmp_path):
    err = refused(capsys, calibrate, ["--checkpoint", str(tmp_path / "missing.safetensors")])
    assert f"argument --checkpoint: {tmp_path / 'missing.safetensors'}: no such file" in err


@pytest.mark.parametrize("option", ["--scorer", "--reference-model", "--prompts-file"])
def test_calibrate_refuses_other_missing_files(calibrate, capsys, checkpoint, tmp_path, option):
    err = refused(capsys, calibrate, ["--checkpoint", checkpoint, option, str(tmp_path / "missing")])
    assert f"argument {option}: {tmp_path / 'missing'}: no such file" in err


@pytest.mark.parametrize("text", ["one prompt only\n", "\n\n"])
def test_calibrate_refuses_a_prompts_file_with_fewer_than_two_prompts(calibrate, capsys, checkpoint, tmp_path, text):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(text)
    err = refused(capsys, calibrate, ["--checkpoint", checkpoint, "--prompts-file", str(prompts)])
    assert f"--prompts-file {prompts}:" in err and "at least 2" in err


def test_calibrate_takes_a_two_prompt_file(calibrate, checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    with pytest.raises(AssertionError, match="imported ComfyUI"):
        calibrate(["--checkpoint", checkpoint, "--prompts-file", str(prompts), "--scorer", checkpoint])


@pytest.mark.parametrize("option,target,message", [
    ("--plot", "missing/plot.png", "missing: no such folder"),
    ("--plot", ".", "is a folder, give a file name"),
])
def test_calibrate_refuses_outputs_it_could_not_write(calibrate, capsys, checkpoint, tmp_path, monkeypatch,
                                                      option, target, message):
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, calibrate, ["--checkpoint", checkpoint, option, target])
    assert f"argument {option}:" in err and message in err


@pytest.mark.parametrize("option,target,message", [
    ("--preset-folder", "model.safetensors/presets", "preset folder model.safetensors/presets: "),
    ("--runs-folder", "model.safetensors", "run-log folder model.safetensors: "),
])
def test_calibrate_refuses_folders_the_node_would_refuse_with_its_message(calibrate, capsys, checkpoint, tmp_path,
                                                                          monkeypatch, option, target, message):
    """A folder the node could not write (here: a file in its way) is refused before anything loads, with the
    node's own message; a missing folder the node would create is taken, as the node takes it."""
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, calibrate, ["--checkpoint", checkpoint, "--scorer", checkpoint, option, target])
    assert message in err and "is a file, not a folder" in err


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "argument --steps: 0 is out of range"),
    (["--sampler", "dpmpp"], "argument --sampler: invalid choice: 'dpmpp'"),
    (["--quant", "W3"], "argument --quant:"),
    (["--scorer-k", "nan"], "argument --scorer-k: 'nan' is not a finite number"),
])
def test_calibrate_refuses_bad_settings(calibrate, capsys, checkpoint, argv, message):
    assert message in refused(capsys, calibrate, ["--checkpoint", checkpoint, *argv])


@pytest.mark.parametrize("name,argv,message", [
    ("digits-experiment", ["--samples", "-5"], "argument --samples: -5 is out of range"),
    ("digits-experiment", ["--strategy", "nope"], "argument --strategy: invalid choice"),
    ("digits-trust", ["--holdout", "1.5"], "argument --holdout: 1.5 is out of range"),
    ("digits-reference", ["--reference-pairs", "1"], "argument --reference-pairs: 1 is out of range"),
    ("digits-reference-report", ["/nonexistent-qsched.json"], "/nonexistent-qsched.json: no such file"),
    ("train-digits", ["--seeds", "0"], "argument --seeds: 0 is out of range"),
])
def test_the_testbed_commands_refuse_bad_arguments(capsys, name, argv, message):
    module_name, function_name = qsched.COMMANDS[name][0].split(":")
    main = getattr(importlib.import_module(f"{qsched.PACKAGE}.{module_name}"), function_name)
    assert message in refused(capsys, main, argv)


class Terminal:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_calibrate_progress_is_one_updating_line_on_a_terminal_with_a_steady_total():
    from comfyui_qsched.comfy_adapter.cli import Progress
    terminal = Terminal(tty=True)
    progress = Progress(started=0.0, stream=terminal)
    # The search plans 25 images plus 4 for the check, stops early at 20, then the run reports done/done.
    for done in (4, 20):
        progress(done, 29)
    progress(24, 24)
    progress.finish()
    updates = terminal.text.split("\r")
    assert updates[0] == "" and terminal.text.endswith("\n") and terminal.text.count("\n") == 1
    assert [u.split(" ")[0] for u in updates[1:]] == ["4/29", "20/29", "24/29"]


def test_calibrate_progress_prints_nothing_into_a_log():
    from comfyui_qsched.comfy_adapter.cli import Progress
    log = Terminal(tty=False)
    progress = Progress(started=0.0, stream=log)
    progress(3, 29)
    progress.finish()
    assert log.text == ""
