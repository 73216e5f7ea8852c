"""Calibrated rounding in passes (quant/calibrated.py, gptq.plan_passes), plain torch on the CPU: the planner keeps
every pass within its budget and in the layers' order, a multi-pass rounding gives the codes of one pass over all
layers (quantize_module with all moments at once), the installed layers are reported as GPTQ-rounded, and a stop
request leaves the model untouched."""
import copy

import pytest
import torch
from torch import nn

from comfyui_qsched.quant import quantize_module
from comfyui_qsched.quant.apply import GPTQ_MARK
from comfyui_qsched.quant.calibrated import gptq_layers, mark_calibrated, plan_module_passes, round_in_passes
from comfyui_qsched.quant.gptq import InputMoments, accumulator_bytes, plan_passes


def test_passes_fit_the_budget_in_order():
    sizes = [("a", 40), ("b", 30), ("c", 50), ("d", 10), ("e", 100), ("f", 1)]
    passes = plan_passes(sizes, 100)
    assert passes == [["a", "b"], ["c", "d"], ["e"], ["f"]]
    assert [name for chunk in passes for name in chunk] == [name for name, _ in sizes]
    size = dict(sizes)
    assert all(sum(size[name] for name in chunk) <= 100 for chunk in passes)
    assert plan_passes(sizes, 10**9) == [[name for name, _ in sizes]]
    assert plan_passes([], 5) == []


def test_a_layer_over_the_budget_and_a_bad_budget_are_named():
    with pytest.raises(ValueError, match=r"layer 'e' alone needs .* over the budget"):
        plan_passes([("a", 1), ("e", 101)], 100)
    with pytest.raises(ValueError, match="budget must be positive"):
        plan_passes([("a", 1)], 0)


def test_accumulator_bytes_follow_the_accumulation_dtype():
    assert accumulator_bytes(3072, "cpu") == 3072 * 3072 * 8
    assert accumulator_bytes(3072, "cuda") == 3072 * 3072 * 4


class Toy(nn.Module):
    """Linear and Conv2d layers (the first and last kept by the default policy)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc1 = nn.Linear(16, 48)
        self.fc2 = nn.Linear(48, 16)
        self.tail = nn.Linear(16, 8)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.conv(torch.relu(self.head(x))))))
        x = x.permute(0, 2, 3, 1)
        return self.tail(self.fc2(torch.relu(self.fc1(x))))


def calibration(model, batches=3):
    generator = torch.Generator().manual_seed(7)
    inputs = [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(batches)]
    runs = []

    def run():
        runs.append(1)
        with torch.no_grad():
            for x in inputs:
                model(x)
    return inputs, run, runs


def test_multi_pass_codes_equal_one_pass_and_are_reported():
    spec = "W4A8-g8"
    model = Toy()
    layers = gptq_layers(model, spec)
    assert set(layers) == {"conv", "fc1", "fc2"}  # head/tail kept (first/last), the grouped conv rounds to nearest
    inputs, run, runs = calibration(model)
    sizes = {name: accumulator_bytes(model.get_submodule(name).weight[0].numel(), "cpu") for name in layers}
    budget = max(sizes.values())  # the conv's 144 x 144 alone, then the two linears together
    passes = plan_module_passes(model, list(layers), budget, "cpu")
    assert passes == [["conv"], ["fc1", "fc2"]] and all(sum(sizes[n] for n in chunk) <= budget for chunk in passes)
    seen = []
    rounded = round_in_passes(model, layers, run, budget, "cpu", on_pass=lambda i, n, names: seen.append(names))
    assert len(runs) == 2 and seen == passes
    assert all(p.is_floating_point() for p in model.parameters())  # the FP model served every pass

    one_pass = copy.deepcopy(model)
    with InputMoments(one_pass, list(layers)) as moments:
        with torch.no_grad():
            for x in inputs:
                one_pass(x)
    report_one = quantize_module(one_pass, spec, hessians=moments.hessians)
    report = quantize_module(model, spec, calibrated=rounded)
    for name in layers:
        assert torch.equal(model.get_submodule(name).weight, one_pass.get_submodule(name).weight), name
        assert torch.equal(model.get_submodule(name).weight_scale, one_pass.get_submodule(name).weight_scale)
    marked = {layer.name for layer in report.layers if layer.backend and layer.backend.endswith(GPTQ_MARK)}
    assert marked == set(layers) == {layer.name for layer in report_one.layers
                                     if layer.backend and layer.backend.endswith(GPTQ_MARK)}
    nearest = next(layer for layer in report.layers if layer.name == "grouped")
    assert nearest.spec is not None and not nearest.backend.endswith(GPTQ_MARK)


def test_cached_layers_are_marked_like_rounded_ones():
    model = Toy()
    report = quantize_module(model, "W4A8")
    assert not any(layer.backend and GPTQ_MARK in layer.backend for layer in report.layers)
    marked = mark_calibrated(report, {"fc1"})
    assert [layer.name for layer in marked.layers if layer.backend and layer.backend.endswith(GPTQ_MARK)] == ["fc1"]


def test_a_stop_request_between_passes_leaves_the_model_in_full_precision():
    model = Toy()
    before = copy.deepcopy(model.state_dict())
    layers = gptq_layers(model, "W4A8")
    _, run, runs = calibration(model)

    def stop():
        if runs:
            raise InterruptedError("stop")
    with pytest.raises(InterruptedError):
        round_in_passes(model, layers, run, accumulator_bytes(144, "cpu"), "cpu", should_stop=stop)
    assert len(runs) == 1 and not model.conv._forward_hooks
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_rounded_codes_for_an_unplanned_layer_are_refused():
    model = Toy()
    layers = gptq_layers(model, "W4A8")
    _, run, _ = calibration(model)
    rounded = round_in_passes(model, layers, run, 10**9, "cpu")
    rounded["tail"] = rounded["fc2"]
    with pytest.raises(ValueError, match=r"GPTQ-rounded codes for layers the plan does not quantize: \['tail'\]"):
        quantize_module(Toy(), "W4A8", calibrated=rounded)


def test_the_cache_keys_calibrated_codes_by_their_settings(tmp_path):
    from comfyui_qsched.quant.cache import quantize_cached
    source = tmp_path / "toy.safetensors"
    source.write_bytes(b"the source file's bytes: only its hash matters here")
    cache = tmp_path / "cache"
    cache.mkdir()
    calls = []

    def load(settings):
        model = Toy()
        _, run, _ = calibration(model)

        def round_layers(layers):
            calls.append(settings)
            return round_in_passes(model, layers, run, 10**9, "cpu")
        report, status = quantize_cached(model, "W4A8", str(source), str(cache), calibration=(settings, round_layers))
        return model, report, status

    first, report, status = load({"seed": 0})
    second, report_hit, status_hit = load({"seed": 0})
    assert (status, status_hit, len(calls)) == ("written", "hit", 1)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert [layer.backend for layer in report_hit.layers] == [layer.backend for layer in report.layers]
    assert sum(GPTQ_MARK in (layer.backend or "") for layer in report_hit.layers) == 3
    _, _, status_other = load({"seed": 1})          # other settings: their own file, never the first one's codes
    nearest = Toy()
    _, status_nearest = quantize_cached(nearest, "W4A8", str(source), str(cache))
    assert (status_other, status_nearest, len(calls)) == ("written", "written", 2)
    assert len(list(cache.iterdir())) == 3
    assert not torch.equal(nearest.fc1.weight, first.fc1.weight)  # GPTQ moved some codes off the nearest ones


@pytest.mark.parametrize("backend", ["bitsandbytes", "torchao"])
def test_a_backend_that_quantizes_in_its_own_library_is_refused_before_any_calibration(backend):
    with pytest.raises(ValueError, match=f"backend '{backend}' quantizes in its own library and cannot take "
                                         "calibrated rounding"):
        gptq_layers(Toy(), "W8A8", backend=backend)


def test_a_plan_without_integer_codes_is_refused_before_any_calibration():
    from comfyui_qsched.quant.calibrated import quantize_calibrated
    linears = nn.Sequential(*(nn.Linear(32, 32) for _ in range(4)))   # fp8 stores every linear as e4m3 bytes
    calls = []
    with pytest.raises(ValueError, match="no layer this plan quantizes can take calibrated rounding .*'fp8'"):
        quantize_calibrated(linears, "W8A8", None, "fp8", None, calls.append)
    assert calls == [] and all(p.is_floating_point() for p in linears.parameters())
    assert set(gptq_layers(Toy(), "W8A8", backend="fp8")) == {"conv"}  # its convolutions keep integer codes


def test_layers_short_of_calibration_rows_are_left_to_nearest_rounding():
    """quant.gptq.enough_rows: a layer whose calibration gives fewer rows than MIN_ROWS_PER_COLUMN per input column
    is not rounded by GPTQ in the passes; it is named with its rows and columns."""
    from comfyui_qsched.quant import gptq
    from comfyui_qsched.quant.calibrated import gptq_layers, round_in_passes
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.GELU(), torch.nn.Linear(64, 16),
                                torch.nn.Linear(16, 4))
    x = torch.randn(40, 8)   # 40 rows: 5 per column of the first layer, 0.6 per column of the second
    layers = gptq_layers(model, "W4A8", "first_last=off")
    undersampled = {}
    rounded = round_in_passes(model, layers, lambda: model(x), 1 << 30, "cpu", undersampled=undersampled)
    assert sorted(rounded) == ["0", "3"] and undersampled == {"2": (40, 64)}
    assert gptq.enough_rows(128, 64) and not gptq.enough_rows(127, 64)


def test_a_cache_hit_marks_only_the_layers_gptq_rounded_when_written(tmp_path):
    """With one calibration batch the conv layer (144 columns) gets 128 rows, under quant.gptq.MIN_ROWS_PER_COLUMN:
    it rounds to nearest. The cache records per layer which rounding its codes had, so a hit reports the same."""
    from comfyui_qsched.quant.cache import quantize_cached
    source = tmp_path / "toy.safetensors"
    source.write_bytes(b"the source file's bytes: only its hash matters here")
    cache = tmp_path / "cache"
    cache.mkdir()

    def load():
        model = Toy()
        _, run, _ = calibration(model, batches=1)
        return quantize_cached(model, "W4A8", str(source), str(cache),
                               calibration=({"batches": 1}, lambda layers: round_in_passes(model, layers, run, 10**9,
                                                                                           "cpu")))

    (written, status), (hit, status_hit) = load(), load()
    marked = {name: [layer.name for layer in report.layers if GPTQ_MARK in (layer.backend or "")]
              for name, report in (("written", written), ("hit", hit))}
    assert (status, status_hit) == ("written", "hit")
    assert marked["written"] == marked["hit"] == ["fc1", "fc2"]
