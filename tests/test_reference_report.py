"""digits-reference reports: runs split by step count or bit width (one process each) merge into one report,
each shared row once; runs of other settings, or whose shared rows disagree, are refused by name."""
import json

import pytest

from comfyui_qsched.testbed.digits import reference_report
from comfyui_qsched.testbed.digits.experiment import load_testbed
from comfyui_qsched.testbed.digits.weights import WEIGHTS_DIR

SETTINGS = {"weights": "shipped", "samples_per_seed": 700, "seeds": [0, 1], "reference_pairs": 40,
            "refine_evaluations": 300, "grid_points": 9, "c_range": [0.8, 1.2], "refine_c_range": [0.7, 1.3],
            "reference_weight": 1.0}


def cell(method, fids, steps=2):
    return {"method": method, "steps": steps, "schedule": {},
            "per_seed": [{"fid": f, "fid_pixels": 2 * f, "tc": 0.9, "iq": 0.9, "mean_pixel": -0.4} for f in fids]}


def run(bits, row_fids, fp_fids=(1.0, 2.0), **changes):
    return {**SETTINGS, **changes, "searches": [],
            "cells": [cell("FP32", fp_fids), cell(f"{bits} naive", [3.0, 4.0]),
                      cell(f"{bits} + reference, per step free + offset", row_fids)]}


def test_runs_of_each_bit_width_merge_with_the_shared_fp32_row_once():
    merged = reference_report.merge_runs([run("W4A8", [1.5, 2.0]), run("W4A4", [2.0, 5.0])])
    assert [c["method"] for c in merged["cells"]] == [
        "FP32", "W4A8 naive", "W4A8 + reference, per step free + offset",
        "W4A4 naive", "W4A4 + reference, per step free + offset"]
    text = reference_report.format_tables(merged)
    assert text.count("| FP32 |") == 1
    # W4A8 row: mean 1.75 over FP32's mean 1.5 = 1.17, per-seed 1.5/1.0 and 2.0/2.0; target 1.35 met
    assert "| W4A8 | 2 | FID (classifier features) | 1.17 (1.00-1.50) | 1.35 | yes |" in text
    # W4A4 row: 3.5 / 1.5 = 2.33, per-seed 2.0 and 2.5; target 2.00 missed by 17%
    assert "| W4A4 | 2 | FID (classifier features) | 2.33 (2.00-2.50) | 2.00 | **no** (by 17%) |" in text


def test_runs_of_other_settings_are_refused_naming_the_setting():
    with pytest.raises(reference_report.MergeError, match="reference_pairs = 160 .* has 40"):
        reference_report.merge_runs([run("W4A8", [1.5, 2.0]), run("W4A4", [2.0, 5.0], reference_pairs=160)])


def test_a_shared_row_with_other_numbers_is_refused():
    with pytest.raises(reference_report.MergeError, match="'FP32' at 2 steps differs between a.json and b.json"):
        reference_report.merge_runs([run("W4A8", [1.5, 2.0]), run("W4A4", [2.0, 5.0], fp_fids=(1.0, 2.5))],
                                    ["a.json", "b.json"])


def test_command_writes_the_merged_runs_and_names_unreadable_files(tmp_path, capsys):
    paths = []
    for bits, fids in (("W4A8", [1.5, 2.0]), ("W4A4", [2.0, 5.0])):
        paths.append(tmp_path / f"{bits}.json")
        paths[-1].write_text(json.dumps(run(bits, fids)))
    out = tmp_path / "merged.json"
    assert reference_report.main([str(p) for p in paths] + ["--merge", str(out)]) == 0
    assert json.loads(out.read_text())["cells"] == reference_report.merge_runs(
        [json.loads(p.read_text()) for p in paths])["cells"]
    assert "**Targets**" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        reference_report.main([str(paths[0]), str(tmp_path / "broken.json")])
    assert exit_info.value.code == 2 and "cannot read the runs" in capsys.readouterr().err


def test_second_training_run_weights_load_and_differ_from_the_shipped_ones():
    """The retrained weights (second training run, RESULTS.md) pass their manifest; same classifier and critic,
    another teacher and student."""
    import os
    retrained = os.path.join(os.path.dirname(WEIGHTS_DIR), "weights_retrained")
    shipped_unet, shipped_scorer = load_testbed()
    retrained_unet, retrained_scorer = load_testbed(retrained)
    assert shipped_unet.state_dict().keys() == retrained_unet.state_dict().keys()
    assert any((a != b).any() for a, b in zip(shipped_unet.state_dict().values(), retrained_unet.state_dict().values()))
    for a, b in zip(shipped_scorer.classifier.state_dict().values(), retrained_scorer.classifier.state_dict().values()):
        assert (a == b).all()


def test_runs_from_before_the_objective_setting_count_as_the_latent_objective():
    old = run("W4A8", [1.5, 2.0])
    assert "reference_objective" not in old
    merged = reference_report.merge_runs([old, run("W4A4", [2.0, 5.0], reference_objective="reference_latent")])
    assert merged["reference_objective"] == "reference_latent"
    assert "reference objective reference_latent" in reference_report.format_tables(merged)
    with pytest.raises(reference_report.MergeError, match="reference_objective = 'reference_features'"):
        reference_report.merge_runs([old, run("W4A4", [2.0, 5.0], reference_objective="reference_features")])
