"""The /qsched server routes (nodes/routes.py) on a plain aiohttp app: refused names, invalid presets, JSON."""
import asyncio
import importlib.util
import json
import os

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfyui_qsched.calibration import presets as preset_store
from comfyui_qsched.samplers import QSchedSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_routes_module():
    # nodes/__init__.py imports every node module (and so ComfyUI); routes.py itself needs only aiohttp
    # and calibration/, so load it alone, as a module of the pack, without its package's __init__.
    spec = importlib.util.spec_from_file_location("comfyui_qsched.nodes.routes",
                                                  os.path.join(ROOT, "nodes", "routes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


routes_module = _load_routes_module()


def _preset(best=0.31, identity=0.29, steps=4):
    schedule = QSchedSchedule.linear(steps, 1.1, 0.9)
    return preset_store.make_preset(schedule, model_name="tiny-sd15", family="sd15", quant="W4A8", sampler="lcm",
                                    identity_score=identity, best_score=best, scorer="jaq", scorer_k=1.0)


@pytest.fixture
def folders(tmp_path):
    """A preset folder with a valid, a truncated and a foreign preset; a valid preset just outside it."""
    inside = tmp_path / "presets"
    preset_store.save_preset(str(inside), "good", _preset())
    text = json.dumps(_preset(), indent=2)
    (inside / "truncated.json").write_text(text[: len(text) // 2])
    (inside / "foreign.json").write_text(json.dumps({"workflow": "not a preset"}))
    preset_store.save_preset(str(tmp_path), "secret", _preset(best=0.99))
    (tmp_path / "sub").mkdir()
    preset_store.save_preset(str(tmp_path / "sub"), "nested", _preset())
    return [str(inside)]


def _get(folders, *paths):
    """GET each path on an app with only the /qsched routes; -> [(status, json body or {"text": ...})]."""
    async def run():
        app = web.Application()
        app.add_routes(routes_module.add_routes(web.RouteTableDef(), lambda: folders))
        async with TestClient(TestServer(app)) as client:
            answers = []
            for path in paths:
                response = await client.get(path)
                text = await response.text()
                is_json = response.content_type == "application/json"
                answers.append((response.status, json.loads(text) if is_json else {"text": text}))
            return answers
    return asyncio.run(run())


def test_list_shows_valid_and_invalid_presets_with_reasons(folders):
    [(status, body)] = _get(folders, "/qsched/presets")
    assert status == 200
    by_name = {entry["name"]: entry for entry in body["presets"]}
    assert set(by_name) == {"good", "truncated", "foreign"}
    good = by_name["good"]
    assert good["valid"] and good["reason"] is None
    summary = good["summary"]
    assert (summary["model"], summary["family"], summary["quant"], summary["sampler"], summary["steps"]) == \
        ("tiny-sd15", "sd15", "W4A8", "lcm", 4)
    assert summary["best_score"] == pytest.approx(0.31) and summary["identity_score"] == pytest.approx(0.29)
    assert summary["c_x"][0] == pytest.approx(1.1) and summary["c_x"][-1] == pytest.approx(1.0)
    assert summary["c_eps"][0] == pytest.approx(0.9)
    assert not by_name["truncated"]["valid"] and "truncated" in by_name["truncated"]["reason"]
    assert not by_name["foreign"]["valid"] and "not a Q-Sched preset" in by_name["foreign"]["reason"]


def test_first_folder_wins_and_missing_folders_are_skipped(folders, tmp_path):
    second = tmp_path / "second"
    preset_store.save_preset(str(second), "good", _preset(best=0.5))
    preset_store.save_preset(str(second), "other", _preset())
    [(status, body)] = _get([str(tmp_path / "missing")] + folders + [str(second)], "/qsched/presets")
    assert status == 200
    names = [entry["name"] for entry in body["presets"]]
    assert sorted(names) == ["foreign", "good", "other", "truncated"]
    good = next(e for e in body["presets"] if e["name"] == "good")
    assert good["summary"]["best_score"] == pytest.approx(0.31)


def test_get_one_preset(folders):
    (ok, body), (bad, invalid), (missing, absent) = _get(
        folders, "/qsched/presets/good", "/qsched/presets/truncated", "/qsched/presets/nope")
    assert ok == 200 and body["valid"] and body["preset"]["format"] == "qsched-preset"
    assert body["summary"]["steps"] == 4 and len(body["preset"]["c_x"]) == 4
    assert bad == 422 and invalid["valid"] is False and "not valid JSON" in invalid["reason"]
    assert missing == 404 and "nope" in absent["error"]


@pytest.mark.parametrize("path", [
    "/qsched/presets/..secret",
    "/qsched/presets/..%2Fsecret",
    "/qsched/presets/%2E%2E%2Fsecret",
    "/qsched/presets/sub%2Fnested",
    "/qsched/presets/sub%5Cnested",
    "/qsched/presets/..%5Csecret",
    "/qsched/presets/%2Ftmp%2Fsecret",
    "/qsched/presets/secret%00",
])
def test_names_that_could_leave_the_folder_are_refused(folders, path):
    [(status, body)] = _get(folders, path)
    assert status == 400, body
    assert "preset" not in body and "summary" not in body
    assert body["error"]


def test_dot_dot_segments_never_reach_outside_the_folder(folders):
    # A literal ../ in the URL is resolved by the client or the router before our handler sees it;
    # wherever it lands, the preset just outside the folder (best score 0.99) is never served.
    for path in ("/qsched/presets/..", "/qsched/presets/../secret", "/qsched/presets/../../secret",
                 "/qsched/presets/%2E%2E/secret"):
        [(status, body)] = _get(folders, path)
        assert status in (400, 404), (path, status, body)
        assert "0.99" not in json.dumps(body)


@pytest.mark.parametrize("name, reason", [
    ("", "empty"), (" ", "empty"), ("a/b", "separator"), ("a\\b", "separator"), ("..", "'..'"), ("x..y", "'..'"),
    ("C:evil", "not allowed"), ("/abs", "separator"), ("nul\x00", "NUL"),
])
def test_the_routes_name_check_says_why(name, reason):
    """The routes check names with the preset store's one checker (calibration.presets.check_name)."""
    with pytest.raises(preset_store.PresetError, match=reason):
        preset_store.check_name(name)
    assert routes_module.read_one_preset(lambda: [], name)[0] == 400


def test_plain_names_pass():
    assert preset_store.check_name("sd15 W4A8 lcm-4 (v2).json") == "sd15 W4A8 lcm-4 (v2)"
