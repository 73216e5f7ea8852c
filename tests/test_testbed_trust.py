"""Digits testbed, trust run (testbed/digits/trust.py) on reduced settings, and the paper-like W4A8: linear layers
group-wise int4, convolutions untouched."""
import json

import pytest
import torch
import torch.nn as nn

from comfyui_qsched.calibration.heldout import VERDICTS
from comfyui_qsched.testbed.digits import experiment, trust
from comfyui_qsched.testbed.digits.trust_report import trust_tables


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_paper_like_w4a8_quantizes_every_linear_in_groups_of_32_and_no_convolution():
    unet, _ = experiment.load_testbed()
    denoiser, report = experiment.quantized_student(unet, "w4a8-paper")
    kinds = {name: type(layer) for name, layer in unet.named_modules()}
    quantized = {layer.name: layer for layer in report.layers if layer.spec is not None}
    linears = {name for name, kind in kinds.items() if kind is nn.Linear}
    assert set(quantized) == linears                       # the time embedding too, as torchao's default filter
    assert all(str(layer.spec) == "W4A8-g32" for layer in quantized.values())
    convs = [name for name, kind in kinds.items() if kind is nn.Conv2d]
    assert convs and all(torch.equal(denoiser.unet.get_submodule(n).weight, unet.get_submodule(n).weight)
                         for n in convs)
    assert experiment.check_bits("W4A8-PAPER") == "W4A8-paper"


def test_reduced_trust_run_reports_picks_verdicts_and_fp_control(tmp_path, capsys):
    out = tmp_path / "trust.json"
    assert trust.main(["--bits", "W4A4", "--steps", "2", "--pairs", "20", "--grid-points", "3",
                       "--calibration-seeds", "2", "--truth-pairs", "30", "--fid-samples", "40", "--eval-seeds", "0",
                       "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    [setting] = results["settings"]
    assert len(setting["seeds"]) == 2
    first = setting["seeds"][0]
    assert (first["search_pairs"], first["heldout_pairs"]) == (15, 5)
    rows = {r["strategy"]: r for r in first["rows"]}
    grid = rows["Algorithm 1 (paper_grid)"]
    assert grid["grid_rank"] == 1 and grid["within_noise"] and grid["images"] == 9 * 15   # 3 x 3 holds identity
    for row in rows.values():
        assert row["heldout"]["verdict"] in VERDICTS and row["heldout"]["difference"]["n"] == 5
        identity = row["pick"] == [1.0, 1.0]
        assert ("fp_control" in row) != identity and (identity or row["fp_control"]["verdict"] in VERDICTS)
    for name in ("racing", "halving_floor", "successive_halving (1-prompt first rung)"):   # subsets of the grid
        assert rows[name]["images"] <= grid["images"] and rows[name]["grid_rank"] is not None
    assert rows["racing"]["within_noise"]
    truth = first["truth"]
    assert truth["pairs"] == 30 and -1 <= truth["spearman_top"] <= 1
    assert "identity" in setting["fid"] and all(len(v["quantized"]) == 1 for v in setting["fid"].values())
    tables = trust_tables(results)
    assert "| W4A4, 2 steps |" in tables and "better than identity" in tables
    assert tables in capsys.readouterr().out
