"""Presets: schema round trip, safe names, and every kind of bad file."""
import json
import logging
import os

import pytest

from comfyui_qsched.calibration import presets as P
from comfyui_qsched.samplers import QSchedSchedule, ScheduleError

SCHEDULE = QSchedSchedule.from_lists([0.9, 0.95, 1.0, 1.05], [1.1, 1.05, 1.0, 0.97], sampler="lcm")


def make(**overrides):
    fields = dict(model_name="tiny-sd15", model_hash="ab" * 32, family="sd15", quant="W4A8", scorer="jaq-clip",
                  scorer_k=2.0, prompts_hash="cafe", n_prompts=20, seed=7, cfg=1.5, identity_score=0.41,
                  best_score=0.47, search={"strategy": "coarse_to_fine", "images": 240})
    fields.update(overrides)
    return P.make_preset(SCHEDULE, **fields)


def test_round_trip_keeps_every_field_and_the_schedule(tmp_path):
    preset = make()
    path = P.save_preset(tmp_path, "tiny lcm", preset)
    assert path == os.path.join(tmp_path, "tiny lcm.json")
    loaded = P.load_preset(tmp_path, "tiny lcm")
    assert loaded == json.loads(json.dumps(preset))
    schedule = P.schedule_of(loaded)
    assert (schedule.c_x, schedule.c_eps, schedule.sampler) == (SCHEDULE.c_x, SCHEDULE.c_eps, "lcm")
    for key in ("model", "quant", "sampler", "steps", "scorer", "prompts_hash", "seed", "scores", "created",
                "pack_version", "version"):
        assert key in loaded
    assert loaded["pack_version"] == P.PACK_VERSION != "unknown"
    assert os.listdir(tmp_path) == ["tiny lcm.json"]                   # no temp file left behind


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", ".hidden", "", "x" * 200, "nul\x00", "/abs"])
def test_names_never_leave_the_folder(tmp_path, name):
    with pytest.raises(P.PresetError, match="preset name"):
        P.save_preset(tmp_path, name, make())
    with pytest.raises(P.PresetError, match="preset name"):
        P.load_preset(tmp_path, name)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, message", [
    ('{"format": "qsched-preset", "version": 1, "mod', "truncated"),
    ("\x00\x01binary", "not valid JSON"),
    ('{"format": "comfy-workflow", "nodes": []}', "not a Q-Sched preset"),
    ("[1, 2]", "expected a JSON object"),
])
def test_corrupt_truncated_and_foreign_files_give_clear_errors(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(P.PresetError, match=message):
        P.load_preset(tmp_path, "bad")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=99), "schema version 99"),
    (lambda d: d.pop("c_eps"), "missing field 'c_eps'"),
    (lambda d: d.update(c_x=[1.0, 1.0]), "c_x has 2 values but c_eps has 4"),
    (lambda d: d.update(steps=8), "steps is 8"),
    (lambda d: d.update(sampler="dpmpp_2m"), "unknown sampler"),
    (lambda d: d.update(c_x=[1.0, -1.0, 1.0, 1.0]), "not positive"),
    (lambda d: d.update(steps=True), "'steps' has the wrong type"),
    (lambda d: d.update(extra=1), "unknown fields extra"),
    (lambda d: d["scores"].update(best=float("inf")), "scores.best"),
    (lambda d: d["scores"].update(heldout={"verdict": "probably"}), "scores.heldout must be an object whose verdict"),
    (lambda d: d["scores"].update(heldout={"verdict": "yes", "difference": {"ci": [0.1]}}),
     "scores.heldout.difference.ci"),
    (lambda d: d["scores"].update(fp_control={"verdict": "no", "gap": {"ci": ["a", 1]}}), "scores.fp_control.gap.ci"),
    (lambda d: d.update(version=1, offset=[[0.0]] * 4), "unknown fields offset"),   # v1 had no offsets
    (lambda d: d.update(version=3), "schema version 3 is not supported"),
    (lambda d: d.update(version=True), "schema version True"),
    (lambda d: d.update(offset=[0.1, 0.2]), "offset has 2 entries but the schedule has 4 steps"),
    (lambda d: d.update(offset="0.1"), "'offset' has the wrong type"),
    (lambda d: d.update(offset=[[0.1], [0.1, 0.2], [0.1], [0.1]]), "different widths"),
])
def test_invalid_fields_are_named(tmp_path, change, message):
    data = make()
    change(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(P.PresetError, match=message):
        P.load_preset(tmp_path, "p")
    with pytest.raises(P.PresetError, match=message):
        P.save_preset(tmp_path, "q", data)
    assert not (tmp_path / "q.json").exists()


def test_missing_preset_is_a_preset_error(tmp_path):
    with pytest.raises(P.PresetError, match="no such preset"):
        P.load_preset(tmp_path, "nothing")


def test_model_hash_mismatch_refuses_or_warns_on_request(tmp_path, caplog):
    P.save_preset(tmp_path, "p", make())
    assert P.load_preset(tmp_path, "p", model_hash="ab" * 32)["model"]["name"] == "tiny-sd15"
    with pytest.raises(P.PresetModelMismatch, match="calibrated for model 'tiny-sd15'"):
        P.load_preset(tmp_path, "p", model_hash="cd" * 32)
    with caplog.at_level(logging.WARNING, logger="qsched.presets"):
        assert P.load_preset(tmp_path, "p", model_hash="cd" * 32, allow_model_mismatch=True)
    assert "using it anyway" in caplog.text


def test_list_presets_reports_valid_and_invalid_entries(tmp_path):
    P.save_preset(tmp_path, "good", make())
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "readme.txt").write_text("ignored")
    entries = P.list_presets(tmp_path)
    assert [e["name"] for e in entries] == ["broken", "good"]
    broken, good = entries
    assert not broken["valid"] and "not valid JSON" in broken["error"] and broken["summary"] is None
    assert good["valid"] and good["error"] is None
    assert good["summary"]["sampler"] == "lcm" and good["summary"]["steps"] == 4
    assert P.list_presets(tmp_path / "missing") == []


def test_failed_write_keeps_the_old_preset(tmp_path, monkeypatch):
    P.save_preset(tmp_path, "p", make(best_score=0.5))
    import comfyui_qsched.atomic_files as atomic_files
    monkeypatch.setattr(atomic_files.os, "fsync", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        P.save_preset(tmp_path, "p", make(best_score=0.9))
    assert P.load_preset(tmp_path, "p")["scores"]["best"] == 0.5
    assert os.listdir(tmp_path) == ["p.json"]


def test_shipped_presets_are_valid_examples():
    entries = P.list_presets(P.SHIPPED_PRESETS)
    assert entries and all(e["valid"] and e["summary"]["example"] for e in entries), entries


def test_a_preset_schedule_refuses_another_step_count():
    schedule = P.schedule_of(make())
    with pytest.raises(ScheduleError, match="4 coefficient pairs but sampling runs 8"):
        schedule.check(8, "lcm")


def test_the_held_out_verdict_rides_under_scores_and_older_presets_load_without_it(tmp_path):
    checks = {"heldout": {"verdict": "not significant", "difference": {"n": 5, "mean": 0.01, "sd": 0.05,
                                                                       "ci": [-0.05, 0.07], "confidence": 0.95},
                          "warnings": ["calibration set too small"]},
              "fp_control": {"verdict": "no", "fp_gain": {"ci": [0.01, 0.02]}, "gap": {"ci": [None, None]}}}
    P.save_preset(tmp_path, "checked", make(checks=checks))
    loaded = P.load_preset(tmp_path, "checked")
    assert loaded["version"] == 2 and loaded["scores"]["heldout"]["verdict"] == "not significant"
    assert loaded["scores"]["fp_control"] == checks["fp_control"]
    assert P.list_presets(tmp_path)[0]["summary"]["scores"]["heldout"]["difference"]["ci"] == [-0.05, 0.07]
    old = make()
    assert "heldout" not in old["scores"]
    P.save_preset(tmp_path, "old", old)
    assert P.load_preset(tmp_path, "old")["scores"] == {"identity": 0.41, "best": 0.47}


# --- schema version 2: per-step offsets -------------------------------------------------------------------------

def test_offsets_round_trip_in_a_version_2_preset(tmp_path):
    schedule = QSchedSchedule.from_lists(SCHEDULE.c_x, SCHEDULE.c_eps, sampler="lcm",
                                         offset=[[0.01, -0.02, 0.0, 0.03], [0.0] * 4, [0.02] * 4, [-0.01] * 4])
    preset = P.make_preset(schedule, model_name="tiny-sd15")
    assert preset["version"] == 2 == P.SCHEMA_VERSION
    P.save_preset(tmp_path, "with offsets", preset)
    loaded = P.schedule_of(P.load_preset(tmp_path, "with offsets"))
    assert loaded.offset == schedule.offset and loaded.c_x == schedule.c_x
    assert P.list_presets(tmp_path)[0]["summary"]["offset"] == [list(row) for row in schedule.offset]
    assert "offset" not in make()                                    # no offsets: no field


def test_the_shipped_version_1_preset_loads_unchanged():
    path = os.path.join(P.SHIPPED_PRESETS, "example-sdxl-turbo-w4a4-euler_ancestral-4steps.json")
    raw = json.loads(open(path, encoding="utf-8").read())
    assert raw["version"] == 1 and "offset" not in raw
    data = P.read_preset_file(path)
    assert data == raw                                               # read as stored, nothing added or rewritten
    schedule = P.schedule_of(data)
    assert schedule.c_x == (1.012, 0.997, 0.982, 0.967) and schedule.c_eps == (0.955, 1.003, 1.051, 1.099)
    assert schedule.offset is None and schedule.sampler == "euler_ancestral"


def test_the_quantizer_a_preset_was_fitted_on_round_trips_and_another_one_is_named(tmp_path):
    quantizer = {"spec": "W4A8-g64-r32", "backend": "auto"}
    P.save_preset(tmp_path, "branch", make(quantizer=quantizer))
    loaded = P.load_preset(tmp_path, "branch")
    assert loaded["quantizer"] == quantizer and P.summary(loaded)["quantizer"] == quantizer
    assert P.quantizer_mismatch(loaded, dict(quantizer)) is None
    message = P.quantizer_mismatch(loaded, {"spec": "W4A4-g64-r32", "backend": "auto"})
    assert "fitted on W4A8-g64-r32 (auto backend)" in message
    assert "this model has W4A4-g64-r32 (auto backend)" in message
    assert "this model has no Q-Sched quantizer" in P.quantizer_mismatch(loaded, None)
    assert "simulate backend" in P.quantizer_mismatch(loaded, {"spec": "W4A8-g64-r32", "backend": "simulate"})
    older = make()  # no record (older presets, models from other loaders): nothing to compare
    assert "quantizer" not in older and P.quantizer_mismatch(older, quantizer) is None


def test_the_rounding_a_preset_was_fitted_on_is_compared_too(tmp_path):
    nearest, calibrated = {"spec": "W4A8", "backend": "int8"}, {"spec": "W4A8", "backend": "int8", "rounding": "GPTQ"}
    P.save_preset(tmp_path, "gptq", make(quantizer=calibrated))
    loaded = P.load_preset(tmp_path, "gptq")
    assert loaded["quantizer"] == calibrated and P.quantizer_mismatch(loaded, dict(calibrated)) is None
    assert ("fitted on W4A8 (int8 backend, GPTQ rounding), this model has W4A8 (int8 backend): "
            in P.quantizer_mismatch(loaded, nearest))
    assert "this model has W4A8 (int8 backend, GPTQ rounding)" in P.quantizer_mismatch(make(quantizer=nearest),
                                                                                         calibrated)


def test_the_smoothing_a_preset_was_fitted_on_is_compared_too(tmp_path):
    import os
    from comfyui_qsched.quant.smoothing import NAME
    gptq = {"spec": "W4A4-g16-r8", "backend": "simulate", "rounding": "GPTQ"}
    smoothed = {**gptq, "smoothing": NAME}
    P.save_preset(tmp_path, "smoothed", make(quantizer=smoothed))
    loaded = P.load_preset(tmp_path, "smoothed")
    assert loaded["quantizer"] == smoothed and P.quantizer_mismatch(loaded, dict(smoothed)) is None
    assert ("fitted on W4A4-g16-r8 (simulate backend, GPTQ rounding, SmoothQuant alpha 0.5 smoothing), this model "
            "has W4A4-g16-r8 (simulate backend, GPTQ rounding): " in P.quantizer_mismatch(loaded, gptq))
    # the web extension names the same smoothing (web/lib/quantspec.js, its own tests in tests/browser)
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "lib", "quantspec.js")
    with open(script, encoding="utf-8") as handle:
        assert f'export const SMOOTHING_NAME = "{NAME}";' in handle.read()


@pytest.mark.parametrize("quantizer, message", [
    ({"spec": "W4A8-r0", "backend": "auto"}, "quantizer.spec: low-rank branch rank must be 1..1024"),
    ({"spec": "W4A4", "backend": "auto", "rounding": "GPTQ", "smoothing": "on"},
     "quantizer.smoothing must be 'SmoothQuant alpha 0.5' beside quantizer.rounding"),
    ({"spec": "W4A4", "backend": "auto", "smoothing": "SmoothQuant alpha 0.5"},
     "quantizer.smoothing must be 'SmoothQuant alpha 0.5' beside quantizer.rounding"),
    ({"spec": "w4a8_g64", "backend": "auto"}, "'w4a8_g64' is not written as 'W4A8-g64'"),
    ({"spec": "W4A8", "backend": "../x"}, "quantizer must be"),
    ({"spec": "W4A8"}, "quantizer must be"),
    ({"spec": 4, "backend": "auto"}, "quantizer must be"),
    ({"spec": "W4A8", "backend": "auto", "rounding": "nearest"}, "quantizer.rounding must be 'GPTQ' .absent"),
    ({"spec": "W4A8", "backend": "auto", "rounding": "GPTQ", "extra": 1}, "quantizer must be"),
    ("W4A8", "field 'quantizer' has the wrong type")])
def test_a_bad_quantizer_record_is_named(tmp_path, quantizer, message):
    preset = make()
    preset["quantizer"] = quantizer
    with pytest.raises(P.PresetError, match=message):
        P.validate(preset)


def test_a_version_1_preset_has_no_quantizer_field():
    preset = make(quantizer={"spec": "W4A8", "backend": "auto"})
    preset["version"] = 1
    with pytest.raises(P.PresetError, match="unknown fields quantizer"):
        P.validate(preset)
