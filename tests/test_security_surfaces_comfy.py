"""Issue 25 inside real ComfyUI (needs COMFYUI_DIR): the export node's names and folders, the preset route with
colliding names, and the calibrate command refusing what the node refuses before it loads anything."""
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

import hostile_files as hostile
from comfy_fixtures import SD3_UNET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def export_env(comfyui_dir, comfy_models, tmp_path_factory):
    import folder_paths
    for name, path in comfy_models.folders.items():
        folder_paths.add_model_folder_path(name, path)
    first = str(tmp_path_factory.mktemp("unet"))
    second = str(tmp_path_factory.mktemp("diffusion_models"))
    folder_paths.add_model_folder_path("diffusion_models", first, is_default=True)   # models/unet's place
    folder_paths.add_model_folder_path("diffusion_models", second)
    from comfyui_qsched.nodes import export
    return {"node": export.QSchedExportComfyInt8, "export": export, "first": first, "second": second}


@pytest.mark.parametrize("name", ["x\n", "x\n.safetensors", "\nx", "x\r", "x\x00", "a b", "sub/x", "..", ".hidden",
                                  "x\u2028"])
def test_export_names_with_control_characters_or_folders_are_refused_when_queued(export_env, name):
    problem = export_env["node"].validate_inputs("", name)
    assert isinstance(problem, str) and repr(name) in problem and "letters, digits" in problem


def test_a_name_held_by_any_diffusion_models_folder_is_refused_naming_that_folder(export_env):
    taken = os.path.join(export_env["second"], "users-own.safetensors")
    open(taken, "wb").close()
    with pytest.raises(ValueError, match=f"users-own.safetensors already exists in {export_env['second']}"):
        export_env["node"].execute(SD3_UNET, "", "users-own")
    hostile.make_fifo(export_env["first"], "fifo.safetensors")   # never opened, never replaced
    with pytest.raises(ValueError, match=f"fifo.safetensors already exists in {export_env['first']}"):
        export_env["node"].execute(SD3_UNET, "", "fifo")
    assert stat.S_ISFIFO(os.lstat(os.path.join(export_env["first"], "fifo.safetensors")).st_mode)
    assert os.path.getsize(taken) == 0


def test_an_export_goes_to_the_first_folder_with_0666_minus_umask(export_env):
    previous = os.umask(0o022)
    try:
        summary = export_env["node"].execute(SD3_UNET, "", "fresh").result[0]
    finally:
        os.umask(previous)
    path = os.path.join(export_env["first"], "fresh.safetensors")
    assert "as fresh.safetensors" in summary and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    from comfyui_qsched.tensor_files import check_safetensors
    assert any(key.endswith(".comfy_quant") for key in check_safetensors(path))


def test_a_corrupt_source_is_named_by_the_export_node(export_env):
    folder = export_env["second"]
    with open(os.path.join(folder, "corrupt.safetensors"), "wb") as handle:
        handle.write((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match=f"model file {folder}/corrupt.safetensors claims a 1 TiB header"):
        export_env["node"].execute("corrupt.safetensors", "", "from-corrupt")


def _get(server, path):
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_dup_json_and_dup_json_json_are_two_names_on_the_server(comfy_server):
    folder = os.path.join(comfy_server.user_dir, "qsched_presets")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "dup.json"), "w") as handle:
        handle.write(hostile.valid_preset_text(steps=2))
    with open(os.path.join(folder, "dup.json.json"), "w") as handle:
        handle.write(hostile.valid_preset_text(steps=3, c_x=[1, 1, 1], c_eps=[1, 1, 1]))
    status, body = _get(comfy_server, "/qsched/presets")
    assert status == 200
    by_name = {entry["name"]: entry for entry in body["presets"]}
    assert by_name["dup"]["valid"] and by_name["dup"]["summary"]["steps"] == 2
    assert "dup.json" not in by_name
    assert not by_name["dup.json.json"]["valid"] and "cannot end in '.json'" in by_name["dup.json.json"]["reason"]
    status, body = _get(comfy_server, "/qsched/presets/dup.json.json")
    assert status == 400 and "cannot end in '.json'" in body["error"]
    status, body = _get(comfy_server, "/qsched/presets/dup.json")
    assert status == 200 and body["name"] == "dup" and body["preset"]["steps"] == 2


def _calibrate(comfyui_dir, *arguments):
    # --comfyui points at nothing loadable: a refusal must come before ComfyUI is imported or a file loaded
    command = [sys.executable, "-m", "qsched", "calibrate", "--comfyui", "/nonexistent-comfyui", *arguments]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_command_refuses_what_the_node_refuses_before_loading(comfyui_dir, tmp_path):
    from comfyui_qsched.calibration.run import CalibrationConfig, ConfigError
    from comfyui_qsched.nodes.calibrate import check_settings
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    (tmp_path / "file").write_text("x")
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"")
    good = tmp_path / "good.safetensors"
    import torch
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(good))
    base = ["--checkpoint", str(good), "--scorer", str(good), "--prompts-file", str(prompts)]
    # the node's own message for the budget and prompt count (validate_inputs), the same text on the command line
    node_budget = check_settings(prompts="a\nb\nc", budget_images=3)
    node_count = check_settings(prompts="a\nb\nc", n_prompts=5)
    assert "budget_images is 3" in node_budget and "n_prompts is 5" in node_count
    cases = [(["--budget", "3"], node_budget), (["--n-prompts", "5"], node_count),
             (["--preset-folder", str(tmp_path / "file")], "preset folder"),
             (["--runs-folder", str(tmp_path / "file" / "x")], "run-log folder"),
             (["--checkpoint", str(fifo)], "is a FIFO"), (["--checkpoint", str(corrupt)], "is empty"),
             (["--scorer", str(corrupt)], "scorer weights"), (["--scorer", str(fifo)], "is a FIFO")]
    for extra, message in cases:
        done = _calibrate(comfyui_dir, *base, *extra)
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr[-2000:])
        assert "calibrate needs a ComfyUI checkout" not in done.stderr   # refused before ComfyUI is looked for
    # and with everything in order it gets as far as looking for ComfyUI
    done = _calibrate(comfyui_dir, *base)
    assert "calibrate needs a ComfyUI checkout" in done.stderr
    with pytest.raises(ConfigError, match="budget_images is 3"):
        CalibrationConfig(prompts="a\nb\nc", budget_images=3).check_before_run()
