"""Issue 14 inside real ComfyUI (needs COMFYUI_DIR): the server keeps answering while hostile files sit in the
preset folder, and the calibration node keys its run log by the scorer's content and names presets uniquely."""
import json
import os
import threading
import urllib.error
import urllib.request

import pytest

import hostile_files as hostile
from comfy_fixtures import SD15_CHECKPOINT, combo_options
from test_metrics_fixtures import save_open_clip, tiny_vit_clip

# Long enough for a loaded CPU; a stalled event loop never answers at all.
ANSWER_WITHIN = 60


def _get(server, path, timeout=ANSWER_WITHIN):
    try:
        with urllib.request.urlopen(server.url + path, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


HOSTILE = {"fifo.json": hostile.make_fifo, "dev-zero.json": hostile.make_dev_zero_link,
           "dev-urandom.json": hostile.make_dev_urandom_link, "deep.json": hostile.make_deep_json,
           "deep-object.json": hostile.make_deep_object, "huge.json": hostile.make_huge_sparse,
           "socket.json": hostile.make_socket, "loop.json": hostile.make_self_loop_link}
NEVER_OPENED = ("fifo", "dev-zero", "dev-urandom", "socket", "loop")
REFUSED = {"deep": "nested", "deep-object": "nested", "huge": "bytes", "outside": "link leading outside"}


def _make(folder, name, secret):
    if name == "outside.json":
        hostile.make_link_outside(folder, name, secret)
    else:
        HOSTILE[name](folder, name)


# One hostile file alone (a 500 from one must not hide a stall from another), then all of them together.
@pytest.mark.parametrize("hostile_names", [["fifo.json"], ["dev-zero.json"], ["deep.json"], ["outside.json"],
                                           [*HOSTILE, "outside.json"]], ids=["fifo", "dev-zero", "deep", "outside",
                                                                             "all"])
def test_the_server_answers_and_lists_good_presets_while_hostile_files_sit_in_the_folder(comfy_server, tmp_path,
                                                                                         hostile_names):
    folder = os.path.join(comfy_server.user_dir, "qsched_presets")
    os.makedirs(folder, exist_ok=True)
    made = ["security-good-a.json", "security-good-b.json", *hostile_names]
    hostile.make_regular(folder, "security-good-a.json", hostile.valid_preset_text(notes="a"))
    hostile.make_regular(folder, "security-good-b.json", hostile.valid_preset_text(notes="b"))
    (tmp_path / "secret.json").write_text(hostile.valid_preset_text(notes="secret"))
    for name in hostile_names:
        _make(folder, name, str(tmp_path / "secret.json"))
    present = [name[: -len(".json")] for name in hostile_names]
    try:
        answers, errors = [], []

        def hammer():   # the routes that read the folder, again and again, from another client
            for _ in range(3):
                for path in ["/qsched/presets", "/api/qsched/presets", *(f"/qsched/presets/{n}" for n in present)]:
                    try:
                        answers.append((path, *_get(comfy_server, path)))
                    except Exception as error:  # noqa: BLE001  (a 500's text body, a timeout) reported below
                        errors.append((path, repr(error)))

        thread = threading.Thread(target=hammer)
        thread.start()
        asked = 0
        while thread.is_alive() or asked < 5:   # meanwhile the server answers everything else
            status, stats = _get(comfy_server, "/system_stats")
            assert status == 200 and "system" in stats
            asked += 1
        info = comfy_server.object_info("QSchedLoadPreset")
        assert "security-good-a.json" in combo_options(info["input"]["required"]["preset"])
        thread.join()
        assert not errors, errors

        for path, status, body in answers:
            if path.endswith("/presets"):
                assert status == 200
                entries = {entry["name"]: entry for entry in body["presets"]}
                assert entries["security-good-a"]["valid"] and entries["security-good-b"]["valid"]
                assert entries["example-sdxl-turbo-w4a4-euler_ancestral-4steps"]["valid"]
                for name in present:
                    if name in NEVER_OPENED:
                        assert name not in entries, entries.get(name)
                    else:
                        assert entries[name]["valid"] is False and REFUSED[name] in entries[name]["reason"]
            else:
                assert status == 422 and body["valid"] is False and body["reason"], (path, status, body)
        assert "secret" not in json.dumps(answers)
    finally:
        for name in made:
            path = os.path.join(folder, name)
            if os.path.lexists(path):
                os.remove(path)


# --- the calibration node --------------------------------------------------------------------------------

SETTINGS = dict(sampler_name="lcm", scheduler="lcm_original", steps=2, cfg=1.0, strategy="paper_grid",
                seed=3, prompts="a red cube on a table\na green field under a blue sky", width=64, height=64)


@pytest.fixture(scope="module")
def stack(comfyui_dir, comfy_models, tmp_path_factory):
    import comfy.sd
    import folder_paths

    user = tmp_path_factory.mktemp("user")
    folder_paths.set_user_directory(str(user))
    from comfyui_qsched.nodes import calibrate

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(comfy_models.path("checkpoints", SD15_CHECKPOINT))[:3]
    return dict(model=model, clip=clip, vae=vae, user=user, calibrate=calibrate,
                scorer_folder=tmp_path_factory.mktemp("scorers"))


def _run(stack, scorer, **changes):
    node = stack["calibrate"].QSchedCalibrate
    output = node.execute(stack["model"], stack["clip"], stack["vae"], scorer, **{**SETTINGS, **changes})
    return output.ui["qsched_calibration"][0]


def test_a_scorer_file_changed_in_place_does_not_reuse_old_scores(stack):
    from comfyui_qsched.scoring import load_scorer
    path = save_open_clip(tiny_vit_clip(seed=21), stack["scorer_folder"] / "scorer.safetensors")
    first = _run(stack, load_scorer(path, device="cpu"), budget_images=5, preset_name="changed-scorer")
    again = _run(stack, load_scorer(path, device="cpu"), budget_images=5, preset_name="changed-scorer")
    assert again["images_reused"] >= first["images_generated"]   # (and the budget buys new candidates)
    save_open_clip(tiny_vit_clip(seed=22), path)                 # same name, other weights
    changed = _run(stack, load_scorer(path, device="cpu"), budget_images=5, preset_name="changed-scorer")
    assert changed["images_reused"] == 0 and changed["images_generated"] == first["images_generated"]


@pytest.mark.parametrize("model_name", ["(beta) tiny", "+plus", "-minus", "\u6a21\u578b"])
def test_model_names_that_were_refused_calibrate(stack, model_name):
    from comfyui_qsched.scoring import load_scorer
    path = save_open_clip(tiny_vit_clip(seed=23), stack["scorer_folder"] / "names.safetensors")
    summary = _run(stack, load_scorer(path, device="cpu"), budget_images=3, model_name=model_name)
    preset = json.loads((stack["user"] / "qsched_presets" / f"{summary['preset']}.json").read_text())
    assert preset["model"]["name"] == model_name


def test_two_long_model_names_get_two_presets(stack):
    from comfyui_qsched.scoring import load_scorer
    path = save_open_clip(tiny_vit_clip(seed=23), stack["scorer_folder"] / "names.safetensors")
    scorer = load_scorer(path, device="cpu")
    names = ["a-very-long-model-name-" * 6 + "first", "a-very-long-model-name-" * 6 + "second"]
    presets = [_run(stack, scorer, budget_images=3, model_name=name)["preset"] for name in names]
    assert presets[0] != presets[1]
    stored = [json.loads((stack["user"] / "qsched_presets" / f"{p}.json").read_text()) for p in presets]
    assert [data["model"]["name"] for data in stored] == names
