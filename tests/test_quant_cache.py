import os

import pytest
import torch
from torch import nn

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfyui_qsched.quant.cache import CacheError, quantize_cached, read_cache


def make_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(4, 16, 3), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32, 64),
                         nn.Linear(64, 64), nn.Linear(64, 8)).requires_grad_(False)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(b"stand-in for the user's bf16 file")
    return str(path)


def cache_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors") and f.startswith("backbone."))


@pytest.mark.parametrize("backend,spec", [("simulate", "W4A8-g16"), ("simulate", "W6A8"), ("fp8", "W4A8"),
                                          ("fp8", "W8A8"), ("simulate", "W4A4-g16-r8"), ("fp8", "W4A8-r8")])
def test_cache_round_trip_gives_identical_layers(tmp_path, source, backend, spec):
    cache = tmp_path / "cache"
    first, second = make_net(), make_net()
    report, status = quantize_cached(first, spec, source, str(cache), backend=backend)
    assert status == "written" and len(cache_files(cache)) == 1
    report_again, status = quantize_cached(second, spec, source, str(cache), backend=backend)
    assert status == "hit"
    assert report_again.bytes_after == report.bytes_after and report_again.quantized == report.quantized
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]


def test_other_spec_or_changed_source_get_their_own_file(tmp_path, source):
    cache = str(tmp_path / "cache")
    quantize_cached(make_net(), "W8A8", source, cache)
    quantize_cached(make_net(), "W4A8", source, cache)
    with open(source, "ab") as handle:
        handle.write(b" edited")
    _, status = quantize_cached(make_net(), "W8A8", source, cache)
    assert status == "written" and len(cache_files(cache)) == 3


def test_corrupt_cache_is_rebuilt_never_used(tmp_path, source):
    cache = tmp_path / "cache"
    reference = make_net()
    quantize_cached(reference, "W8A8", source, str(cache))
    path = cache / cache_files(cache)[0]
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(CacheError, match="unreadable"):
        read_cache(str(path), {})
    rebuilt = make_net()
    _, status = quantize_cached(rebuilt, "W8A8", source, str(cache))
    assert status.startswith("rebuilt") and "unreadable" in status and str(path) in status
    assert torch.equal(rebuilt[3].weight, reference[3].weight)
    _, status = quantize_cached(make_net(), "W8A8", source, str(cache))
    assert status == "hit"


def test_mismatched_cache_is_rebuilt(tmp_path, source):
    cache = tmp_path / "cache"
    quantize_cached(make_net(), "W8A8", source, str(cache))
    w8_path = cache / cache_files(cache)[0]
    quantize_cached(make_net(), "W4A8", source, str(cache))
    w4_path = next(cache / f for f in cache_files(cache) if f != w8_path.name)
    os.replace(w8_path, w4_path)  # a W8 file under the W4 name: header says another spec
    _, status = quantize_cached(make_net(), "W4A8", source, str(cache))
    assert status.startswith("rebuilt") and "another spec" in status


def test_cache_with_wrong_layer_shapes_is_rebuilt(tmp_path, source):
    cache = tmp_path / "cache"
    quantize_cached(make_net(), "W8A8", source, str(cache))
    wider = make_net()
    wider[4] = nn.Linear(64, 64)  # same names, but change what a stored layer must hold
    wider[3] = nn.Linear(32, 128)
    wider[4] = nn.Linear(128, 64)
    _, status = quantize_cached(wider.requires_grad_(False), "W8A8", source, str(cache))
    assert status.startswith("rebuilt") and "does not match" in status
    assert wider[3].weight.shape == (128, 32) and wider[3].weight.dtype == torch.int8


def test_branch_factors_are_stored_and_a_cache_without_them_is_rebuilt(tmp_path, source):
    cache = tmp_path / "cache"
    reference = make_net()
    quantize_cached(reference, "W4A8-r8", source, str(cache))
    path = str(cache / cache_files(cache)[0])
    tensors = load_file(path)
    assert tensors["4.lowrank_down"].shape == (8, 64) and tensors["4.lowrank_up"].dtype == torch.bfloat16
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    save_file({k: v for k, v in tensors.items() if "lowrank" not in k}, path, metadata=metadata)  # as before the branch
    rebuilt = make_net()
    _, status = quantize_cached(rebuilt, "W4A8-r8", source, str(cache))
    assert status.startswith("rebuilt") and "low-rank factors, which were not stored" in status
    assert torch.equal(rebuilt[4].lowrank_up, reference[4].lowrank_up)
    _, status = quantize_cached(make_net(), "W4A8-r8", source, str(cache))
    assert status == "hit"
