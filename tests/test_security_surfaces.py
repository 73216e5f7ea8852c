"""Issue 25, without ComfyUI: the quantized-weight cache, safetensors files, presets v2 and the calibration's
budget under careless and hostile input. Each case ends in one clear error naming the file (or a rebuilt cache),
never a hang, a raw library error or a value of the wrong type. ComfyUI-side cases: test_security_surfaces_comfy.py.
"""
import json
import math
import os
import stat
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import hostile_files as hostile
from comfyui_qsched.atomic_files import write_atomic
from comfyui_qsched.calibration import presets as P
from comfyui_qsched.calibration.run import CalibrationConfig, ConfigError, check_folder, run
from comfyui_qsched.calibration.runlog import RunLog, RunLogError, run_records
from comfyui_qsched.quant.cache import CacheError, quantize_cached, read_cache
from comfyui_qsched.quant.export import ExportError, file_stem, save_comfy_int8
from comfyui_qsched.quant.source import check_source
from comfyui_qsched.samplers import QSchedSchedule, ScheduleError
from comfyui_qsched.tensor_files import TensorFileError, check_safetensors, warn_non_finite_weights

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
TIB = 1 << 40


def make_net():
    torch.manual_seed(3)
    # the default policy keeps the first and last layers: 1 and 2 are quantized
    return nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 8)).requires_grad_(False)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_file({"0.weight": torch.randn(64, 32), "1.weight": torch.randn(64, 64)}, str(path))
    return str(path)


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def _header_file(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


# Each corrupt file and the words its error must carry.
CORRUPT = {
    "empty": (lambda p: _write(p, b""), "is empty"),
    "header length 1 TiB": (lambda p: _write(p, struct.pack("<Q", TIB) + b"{}"), "1 TiB header"),
    "header past the end": (lambda p: _write(p, struct.pack("<Q", 1000) + b"{}"), "truncated"),
    "a 4 TiB tensor": (lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 16]}},
                                              b"\0" * 16), "4 TiB"),
    "a tensor past the end": (lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [1024],
                                                               "data_offsets": [0, 4096]}}, b"\0" * 16), "truncated"),
    "not JSON": (lambda p: _write(p, struct.pack("<Q", 4) + b"{{{{"), "not JSON"),
    "seven bytes": (lambda p: _write(p, b"\1" * 7), "too short"),
}


def _truncated(tmp_path):
    path = tmp_path / "whole.safetensors"
    save_file({"w": torch.ones(256)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    return str(path)


# --- 3. corrupt safetensors: one clear error naming the file ---------------------------------------------------

@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_safetensors_are_named_for_checkpoints_caches_scorers_and_exports(tmp_path, kind):
    make, words = CORRUPT[kind]
    path = make(tmp_path / "model.safetensors")
    with pytest.raises(TensorFileError, match=f"model file {path} .*{words}"):
        check_source(path)
    with pytest.raises(CacheError, match=f"cache file {path} is unreadable: .*{words}"):
        read_cache(path, {})
    from comfyui_qsched.scoring.checkpoints import ScorerError, read_scorer_weights
    with pytest.raises(ScorerError, match=f"scorer weights {path} .*{words}"):
        read_scorer_weights(path)
    with pytest.raises(TensorFileError, match=f"exported file {path} .*{words}"):
        check_safetensors(path, "exported file")


def test_a_truncated_file_is_named_as_truncated(tmp_path):
    path = _truncated(tmp_path)
    with pytest.raises(TensorFileError, match=f"model file {path} places tensor 'w' .*truncated"):
        check_source(path)


def test_a_sound_file_passes_and_its_header_is_returned(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.zeros(0)}, str(path), metadata={"k": "v"})
    header = check_safetensors(str(path))
    assert header["a"]["shape"] == [2, 3] and header["a"]["dtype"] == "BF16" and set(header) == {"a", "b"}


# --- 2. non-regular files where the pack reads ----------------------------------------------------------------

def _cache_entry_path(tmp_path, source):
    cache = tmp_path / "cache"
    quantize_cached(make_net(), "W8A8", source, str(cache))
    [name] = [f for f in os.listdir(cache) if f.endswith(".safetensors")]
    return cache, cache / name


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_a_non_regular_cache_entry_is_never_opened_and_the_cache_is_rebuilt(tmp_path, source, kind):
    cache, path = _cache_entry_path(tmp_path, source)
    os.remove(path)
    {"fifo": hostile.make_fifo, "directory": hostile.make_directory,
     "dev-zero": hostile.make_dev_zero_link}[kind](str(cache), path.name)
    feeder = hostile.FifoFeeder(str(path), "junk") if kind == "fifo" else None
    try:
        if kind == "directory":
            with pytest.raises(CacheError, match="is a folder, not a regular file"):
                read_cache(str(path), {})
            return
        net = make_net()
        _, status = quantize_cached(net, "W8A8", source, str(cache))
    finally:
        if feeder:
            feeder.close()
    assert status.startswith("rebuilt") and ("FIFO" if kind == "fifo" else "character device") in status
    assert feeder is None or not feeder.fed        # the FIFO was never opened for reading
    assert stat.S_ISREG(os.lstat(path).st_mode)    # the rebuilt entry replaced it
    assert quantize_cached(make_net(), "W8A8", source, str(cache))[1] == "hit"


@pytest.mark.parametrize("maker,words", [(hostile.make_fifo, "FIFO"), (hostile.make_directory, "folder"),
                                         (hostile.make_dev_zero_link, "character device")])
def test_a_non_regular_model_file_is_refused_before_hashing_or_loading(tmp_path, maker, words):
    with hostile.planted(maker, str(tmp_path), "model.safetensors") as path:
        with pytest.raises(TensorFileError, match=f"model file {path} is .*{words}"):
            check_source(path)
        with pytest.raises(TensorFileError, match=words):
            quantize_cached(make_net(), "W8A8", path, str(tmp_path / "cache"))


@pytest.mark.parametrize("maker,words", [(hostile.make_fifo, "FIFO"), (hostile.make_directory, "folder"),
                                         (hostile.make_dev_zero_link, "character device")])
def test_a_non_regular_run_log_is_refused_by_name(tmp_path, maker, words):
    with hostile.planted(maker, str(tmp_path), "run.jsonl", fifo_text="") as path:
        with pytest.raises(RunLogError, match=f"run log {path} is .*{words}"):
            RunLog(path, {"a": 1})


# --- finiteness ---------------------------------------------------------------------------------------------

def test_a_cache_entry_with_nan_scales_is_refused_by_layer_and_rebuilt(tmp_path, source):
    cache, path = _cache_entry_path(tmp_path, source)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    tensors["1.weight_scale"][0] = float("nan")
    save_file(tensors, str(path), metadata=metadata)
    net = make_net()
    _, status = quantize_cached(net, "W8A8", source, str(cache))
    assert status.startswith("rebuilt") and "NaN or infinite values in layers 1" in status
    assert torch.isfinite(net[1].weight_scale).all()


def test_a_model_with_nan_weights_gets_a_warning_naming_the_tensors(caplog):
    import logging
    net = make_net()
    net[3].weight[3, 2] = float("inf")
    net[0].bias[0] = float("nan")
    with caplog.at_level(logging.WARNING):
        bad = warn_non_finite_weights(net, "tiny.safetensors", logging.getLogger("t"))
    assert bad == ["0.bias", "3.weight"]
    assert "tiny.safetensors has NaN or infinite weights in 2 tensors: 0.bias, 3.weight" in caplog.text
    assert warn_non_finite_weights(make_net(), "fine", logging.getLogger("t")) == []


def test_an_export_with_nan_is_refused_by_layer_and_nothing_is_written(tmp_path):
    from comfyui_qsched.quant import quantize_module
    net = make_net()
    quantize_module(net, "W8A8", backend="simulate")
    net[0].bias[1] = float("nan")
    with pytest.raises(ExportError, match=r"out.safetensors not written: NaN or infinite values in 0.bias"):
        save_comfy_int8(net, str(tmp_path / "out.safetensors"))
    assert os.listdir(tmp_path) == []


# --- 8. the cache's message for a wrong scale shape --------------------------------------------------------------

def test_a_wrong_scale_shape_is_reported_with_the_scales_shape(tmp_path, source):
    cache, path = _cache_entry_path(tmp_path, source)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    right = tuple(tensors["1.weight_scale"].shape)
    tensors["1.weight_scale"] = torch.ones(3, 5)
    save_file(tensors, str(path), metadata=metadata)
    _, status = quantize_cached(make_net(), "W8A8", source, str(cache))
    assert f"stored scales of shape (3, 5) do not match the W8A8 scales' shape {right}" in status


# --- 1. export names and modes ---------------------------------------------------------------------------------

NAME_CHARS = "abcXYZ019._-"


@SETTINGS
@given(name=st.text(max_size=160))
def test_export_names_are_plain_file_names_or_refused(name):
    try:
        stem = file_stem(name)
    except ExportError as error:
        assert repr(name) in str(error)
        return
    assert stem and len(stem) <= 151 and set(stem) <= set(NAME_CHARS + "".join(map(chr, range(48, 58)))
                                                          + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert stem[0].isalnum() and os.path.basename(stem) == stem and stem not in (".", "..")
    assert name in (stem, stem + ".safetensors")


@SETTINGS
@given(stem=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True),
       tail=st.sampled_from(["\n", "\r", "\x00", "\t", " ", "/", "\\", "\u2028", "\x85", "\n.safetensors"]))
def test_a_control_character_or_separator_anywhere_is_refused(stem, tail):
    for name in (stem + tail, tail + stem, stem + tail + stem):
        with pytest.raises(ExportError, match="use letters, digits"):
            file_stem(name)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_rewritten_file_gets_0666_minus_umask_even_when_the_writer_recreates_it(tmp_path, umask):
    previous = os.umask(umask)
    try:
        def recreate(temporary):   # what safetensors' save_file does: a new file of its own mode
            os.remove(temporary)
            descriptor = os.open(temporary, os.O_CREAT | os.O_WRONLY, 0o600)
            os.write(descriptor, b"data")
            os.close(descriptor)
        path = write_atomic(str(tmp_path / "new.safetensors"), recreate)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_an_exported_file_gets_0666_minus_umask(tmp_path):
    from comfyui_qsched.quant import quantize_module
    net = make_net()
    quantize_module(net, "W8A8", backend="simulate")
    previous = os.umask(0o022)
    try:
        save_comfy_int8(net, str(tmp_path / "m.safetensors"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "m.safetensors").st_mode) == 0o644
    check_safetensors(str(tmp_path / "m.safetensors"))


# --- 4. presets v2: one numeric validation -------------------------------------------------------------------

BAD_NUMBERS = ["0.05", True, False, None, [0.05], {"v": 1}, "nan"]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("field", ["c_x", "c_eps", "offset"])
def test_every_numeric_field_refuses_text_and_booleans_on_load_and_save(tmp_path, field, value):
    preset = json.loads(hostile.valid_preset_text(version=2, offset=[[0.0], [0.0]]))
    preset[field] = [[value], [0.0]] if field == "offset" else [value, 1.0]
    if field == "offset" and isinstance(value, list):
        preset[field] = [[value], [0.0]]
    (tmp_path / "p.json").write_text(json.dumps(preset))
    with pytest.raises(P.PresetError, match=rf"preset p.json: {field}(\[0\])? must be .*number"):
        P.load_preset(tmp_path, "p")
    with pytest.raises(P.PresetError, match=rf"{field}(\[0\])? must be .*number"):
        P.save_preset(tmp_path, "q", preset)
    assert not (tmp_path / "q.json").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("field", ["c_x", "c_eps", "offset"])
def test_nan_and_infinity_are_refused_in_every_numeric_field(field, value):
    schedule = {"c_x": [1.0, 1.0], "c_eps": [1.0, 1.0], "offset": [[0.0], [0.0]]}
    schedule[field] = [[value], [0.0]] if field == "offset" else [value, 1.0]
    with pytest.raises(ScheduleError, match=rf"{field}\[0\](\[0\])? = -?(nan|inf) is not finite"):
        QSchedSchedule.from_dict(schedule)


NUMBER = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10)
NOT_NUMBER = st.booleans() | st.text(max_size=6) | st.none() | st.lists(st.integers(), max_size=2) | \
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
ROW = st.lists(NUMBER | NOT_NUMBER, min_size=0, max_size=5) | NUMBER | NOT_NUMBER


@SETTINGS
@given(steps=st.integers(1, 4), c_x=st.lists(NUMBER | NOT_NUMBER, max_size=5),
       c_eps=st.lists(NUMBER | NOT_NUMBER, max_size=5), offset=st.none() | st.lists(ROW, max_size=5))
def test_the_presets_v2_schedule_is_exactly_what_was_written_or_refused(tmp_path, steps, c_x, c_eps, offset):
    """Types, lengths, NaN/Inf and nesting of c_x, c_eps and offset: a preset saves and loads back unchanged, or
    both save and load refuse it with a PresetError; a value is never coerced."""
    preset = json.loads(hostile.valid_preset_text(version=2, steps=steps))
    preset.update(c_x=c_x, c_eps=c_eps, **({"offset": offset} if offset is not None else {}))
    try:
        P.save_preset(tmp_path, "p", preset)
    except P.PresetError:
        (tmp_path / "p.json").write_text(json.dumps(preset))   # (allows NaN: JSON's readers refuse it by name)
        with pytest.raises(P.PresetError, match="preset p.json"):
            P.load_preset(tmp_path, "p")
        return
    loaded = P.load_preset(tmp_path, "p")
    assert loaded["c_x"] == c_x and loaded["c_eps"] == c_eps and loaded.get("offset") == offset
    for value in c_x + c_eps:
        assert type(value) in (int, float) and math.isfinite(value) and value > 0
    assert len(c_x) == len(c_eps) == steps
    if offset is not None:
        rows = [row if isinstance(row, list) else [row] for row in offset]
        assert len(rows) == steps and len({len(row) for row in rows}) == 1
        assert all(type(v) in (int, float) and math.isfinite(v) for row in rows for v in row)


@SETTINGS
@given(shape=st.tuples(st.integers(2, 80), st.just(1)) | st.tuples(st.integers(2, 6), st.integers(2, 3)))
def test_deeply_nested_offsets_are_refused_never_crash(tmp_path, shape):
    depth, width = shape   # at most 3^6 numbers
    nested = 0.1
    for _ in range(depth):
        nested = [nested] * width
    preset = json.loads(hostile.valid_preset_text(version=2))
    preset["offset"] = [nested, nested]
    (tmp_path / "p.json").write_text(json.dumps(preset))
    with pytest.raises(P.PresetError, match="preset p.json"):
        P.load_preset(tmp_path, "p")


def test_an_oversized_preset_is_refused_by_size(tmp_path):
    preset = json.loads(hostile.valid_preset_text(version=2))
    preset["offset"] = [[0.001] * 100_000, [0.001] * 100_000]   # well-formed, but past the 1 MiB a preset may have
    (tmp_path / "p.json").write_text(json.dumps(preset))
    with pytest.raises(P.PresetError, match=r"preset p.json: is \d+ bytes, more than the 1048576 bytes allowed"):
        P.load_preset(tmp_path, "p")


# --- 5. names that collide --------------------------------------------------------------------------------------

def test_dup_json_json_is_listed_by_its_file_name_and_never_read_as_dup_json(tmp_path):
    (tmp_path / "dup.json").write_text(hostile.valid_preset_text(notes="first"))
    (tmp_path / "dup.json.json").write_text(hostile.valid_preset_text(notes="second", steps=3, c_x=[1, 1, 1],
                                                                       c_eps=[1, 1, 1]))
    entries = {entry["name"]: entry for entry in P.list_presets(str(tmp_path))}
    assert set(entries) == {"dup", "dup.json.json"}
    assert entries["dup"]["valid"] and entries["dup"]["summary"]["steps"] == 2
    assert not entries["dup.json.json"]["valid"] and "cannot end in '.json'" in entries["dup.json.json"]["error"]
    assert P.load_preset(tmp_path, "dup.json")["notes"] == "first"   # "dup.json" is dup's file name
    for name in ("dup.json.json", "dup.JSON", "x.Json.json"):
        with pytest.raises(P.PresetError, match="cannot end in '.json'"):
            P.preset_path(str(tmp_path), name)


@SETTINGS
@given(names=st.lists(st.from_regex(r"[a-z0-9][a-z0-9.]{0,12}", fullmatch=True), min_size=1, max_size=6,
                      unique=True))
def test_every_listed_name_reads_the_file_it_lists(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("presets")
    for index, name in enumerate(names):
        (folder / f"{name}.json").write_text(hostile.valid_preset_text(notes=str(index)))
    listed = P.list_presets(str(folder))
    assert len({entry["name"] for entry in listed}) == len(listed) == len(names)
    for entry in listed:
        if entry["valid"]:
            index = names.index(entry["name"])
            assert P.load_preset(folder, entry["name"])["notes"] == str(index)
        else:
            with pytest.raises(P.PresetError):
                P.load_preset(folder, entry["name"])


def test_a_default_preset_name_never_ends_in_json():
    for text in ("model.json", "MODEL.JSON", "a.Json"):
        name = P.safe_preset_name(text)
        assert not name.lower().endswith(".json") and P.check_name(name) == name


# --- 6. budgets that are budgets -------------------------------------------------------------------------------

class Scorer:
    def score(self, images, prompts):
        from types import SimpleNamespace
        return SimpleNamespace(jaq=images.float().mean(dim=(1, 2, 3)))


def _generator(calls):
    def generate(items):
        calls.append(len(items))
        return torch.stack([torch.full((2, 2, 3), s.c_x[0] * 0.4 + s.c_eps[0] * 0.1) for s, _ in items])
    return generate


@pytest.mark.parametrize("fp_control", [False, True])
@pytest.mark.parametrize("budget", [0, 16, 30, 47])
def test_budget_images_counts_every_image_and_the_summary_and_run_log_agree(tmp_path, budget, fp_control):
    # jaq, as a saved workflow stores it: auto would mean the closed form where the FP model is given
    config = CalibrationConfig(strategy="paper_grid", prompts="\n".join("abcdefgh"), budget_images=budget,
                               objective="jaq")
    calls, fp_calls = [], []
    done = run(config, _generator(calls), Scorer(), model_hash="0" * 64, family="Toy", preset_folder=tmp_path,
               runs_folder=tmp_path, generate_reference=_generator(fp_calls) if fp_control else None)
    images = done.summary()["images"]
    assert images["total"] == sum(calls) + sum(fp_calls) == sum(v for k, v in images.items() if k != "total")
    assert images["search"] == done.search.images_generated and images["fp_control"] == sum(fp_calls)
    if budget:
        assert images["total"] <= budget
    assert images["total"] <= config.planned_images(reference=fp_control)
    assert done.preset["search"]["images"] == images
    assert run_records(os.path.join(tmp_path, done.preset["search"]["run_log"]))[-1] == images


@pytest.mark.parametrize("fp_control,needed", [(False, 10), (True, 14)])
def test_a_budget_that_cannot_cover_the_check_is_refused_before_any_image(tmp_path, fp_control, needed):
    config = CalibrationConfig(strategy="paper_grid", prompts="\n".join("abcdefgh"), budget_images=needed - 1)
    calls = []
    with pytest.raises(ConfigError, match=f"budget_images is {needed - 1}, .* give at least {needed}"):
        run(config, _generator(calls), Scorer(), model_hash="0" * 64, family="Toy", preset_folder=tmp_path,
            runs_folder=tmp_path, generate_reference=_generator(calls) if fp_control else None)
    assert calls == []


# --- 7. folders refused before the first image ------------------------------------------------------------------

def test_a_preset_or_run_folder_that_is_a_file_is_refused_before_any_image(tmp_path):
    (tmp_path / "file").write_text("x")
    for folder in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(ConfigError, match=f"preset folder {folder}: .*file is a file, not a folder"):
            check_folder(str(folder), "preset folder")
    calls = []
    config = CalibrationConfig(strategy="paper_grid", prompts="a\nb")
    with pytest.raises(ConfigError, match="run-log folder"):
        run(config, _generator(calls), Scorer(), model_hash="0" * 64, family="Toy", preset_folder=tmp_path,
            runs_folder=tmp_path / "file")
    assert calls == []
    assert check_folder(str(tmp_path / "new" / "deeper"), "preset folder")   # made when the preset is written
