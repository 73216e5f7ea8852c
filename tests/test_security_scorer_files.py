"""Scorer files never run code (issue 14): TorchScript archives are read as tensors without torch.jit.load,
hand-made hostile pickles and JSON next to the weights end in a clear ScorerError and touch nothing, and the
scorer's identity (what keys stored scores) follows the weights' content and options, not the file name."""
import json
import os
import struct
import tempfile
import warnings
import zipfile
from typing import Tuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import hostile_files as hostile
from comfyui_qsched.scoring import ScorerError, load_scorer, read_scorer_weights
from comfyui_qsched.calibration.run import CalibrationConfig
from comfyui_qsched.calibration.runlog import settings_hash
from test_metrics_fixtures import comfy_images, save_open_clip, tiny_rn_clip, tiny_vit_clip

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit is deprecated
        return torch.jit.script(module)


# --- a TorchScript archive whose __setstate__ writes a file (what torch.jit.load runs) -----------------------

class FileWriter(torch.nn.Module):
    """Its TorchScript __setstate__ saves a tensor to `target` when the archive is loaded with torch.jit.load."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.weight = torch.nn.Parameter(torch.arange(3.0))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.target, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]):
        self.target = state[0]
        self.weight = state[1]
        self.training = state[2]
        torch.ops.aten.save(state[1], state[0])


class ClipWithAPassenger(torch.nn.Module):
    def __init__(self, clip, target):
        super().__init__()
        self.clip = clip
        self.passenger = FileWriter(target)

    def forward(self, x):
        return self.passenger(x)


@pytest.mark.parametrize("victim_exists", [False, True])
def test_a_torchscript_file_that_writes_files_when_loaded_writes_nothing(tmp_path, victim_exists):
    victim = tmp_path / "elsewhere" / "victim.bin"
    victim.parent.mkdir()
    if victim_exists:
        victim.write_bytes(b"precious")
    archive = tmp_path / "scorers" / "ViT-L-14.pt"
    archive.parent.mkdir()
    _script(ClipWithAPassenger(tiny_vit_clip(seed=1, quick_gelu=True), str(victim))).save(str(archive))
    before = hostile.snapshot(str(tmp_path))
    with pytest.raises(ScorerError) as error:
        read_scorer_weights(archive)
    assert "never runs code" in str(error.value) and "safetensors" in str(error.value)
    assert hostile.snapshot(str(tmp_path)) == before        # victim neither created nor overwritten
    assert victim.exists() == victim_exists


def _forbid(*args, **kwargs):
    raise AssertionError("a scorer file reached torch.jit.load / torch.load")


@pytest.mark.parametrize("build", ["vit-script", "vit-script-fp16", "rn-script", "vit-trace"])
def test_torchscript_tensors_equal_the_model_state_dict_without_jit_load(tmp_path, monkeypatch, build):
    model = tiny_rn_clip(seed=4) if build.startswith("rn") else tiny_vit_clip(seed=4, quick_gelu=True)
    if build.endswith("fp16"):
        model = model.half()   # OpenAI's files hold fp16 weights
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    archive = tmp_path / "openai.pt"
    if build == "vit-trace":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(model, (torch.rand(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long))).save(
                str(archive))
    else:
        _script(model).save(str(archive))
    monkeypatch.setattr(torch.jit, "load", _forbid)
    monkeypatch.setattr(torch, "load", _forbid)
    weights = read_scorer_weights(archive)
    assert weights.from_openai_archive
    assert set(weights.state_dict) == set(reference) | {"attn_mask"} & set(weights.state_dict)
    for key, tensor in reference.items():
        assert weights.state_dict[key].dtype == tensor.dtype and torch.equal(weights.state_dict[key], tensor), key


def test_a_torchscript_scorer_scores_like_its_safetensors_twin(tmp_path, monkeypatch):
    model = tiny_vit_clip(seed=13, quick_gelu=True)
    _script(model).save(str(tmp_path / "ViT-tiny.pt"))
    plain = save_open_clip(model, tmp_path / "twin.safetensors")
    monkeypatch.setattr(torch.jit, "load", _forbid)
    images = comfy_images(2, 40, 40, seed=1)
    from_archive = load_scorer(tmp_path / "ViT-tiny.pt", device="cpu").score(images, ["a cat", "a dog"])
    twin = load_scorer(plain, device="cpu", quick_gelu=True).score(images, ["a cat", "a dog"])
    torch.testing.assert_close(from_archive.jaq, twin.jaq, rtol=0, atol=0)


# --- hand-made hostile archives ------------------------------------------------------------------------------

def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value):
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    return b"\x8a" + bytes([8]) + value.to_bytes(8, "little", signed=True)   # LONG1, any size we use


def _ints(values):
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor(key, numel, size, stride, offset=0, storage="FloatStorage"):
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"((" + _text("storage") + _global("torch", storage)
            + _text(key) + _text("cpu") + _int(numel) + b"tQ" + _int(offset) + _ints(size) + _ints(stride)
            + b"\x89" + _global("collections", "OrderedDict") + b")R" + b"tR")


def _record(attributes, type_name="M"):
    """A TorchScript object record: GLOBAL __torch__.<type>, NEWOBJ, then BUILD with a dict of attributes."""
    body = b"".join(_text(name) + value for name, value in attributes)
    return _global("__torch__", type_name) + b")\x81}(" + body + b"ub"


def _archive(path, pickle_body, storages):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a/data.pkl", b"\x80\x02" + pickle_body + b".")
        archive.writestr("a/constants.pkl", b"\x80\x02).")
        archive.writestr("a/code/__torch__.py", "class M(Module):\n  pass\n")
        archive.writestr("a/version", "3\n")
        for key, data in storages.items():
            archive.writestr(f"a/data/{key}", data)


def _payloads(sentinel):
    """Pickle snippets that each leave one value on the stack and would create `sentinel` if run."""
    command = f"touch {sentinel}"
    call = lambda module, name, *args: _global(module, name) + b"(" + b"".join(args) + b"tR"  # noqa: E731
    return {
        "posix.system": call("posix", "system", _text(command)),
        "os.system": call("os", "system", _text(command)),
        "builtins.eval": call("builtins", "eval", _text(f"open({str(sentinel)!r}, 'w')")),
        "builtins.exec": call("builtins", "exec", _text(f"open({str(sentinel)!r}, 'w')")),
        "builtins.open": call("builtins", "open", _text(str(sentinel)), _text("w")),
        "subprocess.Popen": call("subprocess", "Popen", b"(" + _text("touch") + _text(str(sentinel)) + b"t"),
        "torch.save": call("torch", "save", _int(1), _text(str(sentinel))),
        "torch.jit.load": call("torch.jit", "load", _text(str(sentinel))),
        "stack_global": _text("posix") + _text("system") + b"\x93(" + _text(command) + b"tR",
        "inst": b"(" + _text(command) + b"iposix\nsystem\n",
        "obj": b"(" + _global("posix", "system") + _text(command) + b"o",
        "newobj_of_a_builtin": _global("builtins", "object") + b")\x81",
        "build_on_a_tensor": _tensor("0", 4, (4,), (1,)) + b"}(" + _text("requires_grad") + b"\x88ub",
        "reduce_with_bad_args": _global("torch._utils", "_rebuild_tensor_v2") + b"(" + _text("x") + b"tR",
        "storage_outside": _tensor("../../../etc/passwd", 4, (4,), (1,)),
        "storage_huge": _tensor("0", 1 << 40, (1 << 40,), (1,)),
        "view_past_the_end": _tensor("0", 4, (5,), (1,)),
        "negative_stride": _tensor("0", 4, (2,), (-1,), offset=3),
        "bool_size": _global("torch._utils", "_rebuild_tensor_v2") + b"((" + _text("storage")
        + _global("torch", "FloatStorage") + _text("0") + _text("cpu") + _int(4) + b"tQ" + _int(0) + b"(\x88t"
        + b"(\x88t\x89" + _global("collections", "OrderedDict") + b")RtR",
        "ext1": b"\x82\x01",
        "persistent_string": _text(f"{sentinel}") + b"Q",
    }


FLOATS = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


@SETTINGS
@given(payload=st.sampled_from(sorted(_payloads("/x"))), depth=st.integers(0, 3), position=st.integers(0, 2),
       names=st.lists(st.text(alphabet="abcdefgh_", min_size=1, max_size=6), min_size=2, max_size=2, unique=True))
def test_hostile_pickles_are_refused_and_run_nothing(payload, depth, position, names):
    with tempfile.TemporaryDirectory() as folder:
        sentinel = os.path.join(folder, "pwned")
        attributes = [(names[0], _tensor("0", 4, (2, 2), (2, 1))), (names[1], _int(7))]
        attributes.insert(position, ("payload", _payloads(sentinel)[payload]))
        body = _record(attributes)
        for level in range(depth):
            body = _record([("inner", body), ("w", _tensor("0", 4, (4,), (1,)))], f"Level{level}")
        path = os.path.join(folder, "evil.pt")
        _archive(path, body, {"0": FLOATS})
        before = hostile.snapshot(folder)
        with pytest.raises(ScorerError) as error:
            read_scorer_weights(path)
        assert str(error.value).startswith(path) and "safetensors" in str(error.value)
        assert not os.path.exists(sentinel) and hostile.snapshot(folder) == before


@SETTINGS
@given(layout=st.lists(st.tuples(st.text(alphabet="abcxyz", min_size=1, max_size=4), st.integers(0, 3),
                                 st.integers(1, 4)), min_size=1, max_size=5, unique_by=lambda t: t[0]),
       nested=st.booleans())
def test_benign_archives_give_exactly_their_tensors(layout, nested):
    """Tensors at any offset and length of their storage come back bit for bit, named by attribute path."""
    from comfyui_qsched.scoring.torchscript import read_torchscript_tensors
    storage = torch.arange(8, dtype=torch.float32)
    expected, attributes = {}, []
    for name, offset, length in layout:
        length = min(length, 8 - offset)
        attributes.append((name, _tensor("0", 8, (length,), (1,), offset)))
        expected[name] = storage[offset:offset + length]
    body = _record(attributes)
    if nested:
        body = _record([("child", body), ("top", _tensor("0", 8, (2, 2), (1, 2)))], "Outer")
        expected = {f"child.{k}": v for k, v in expected.items()}
        expected["top"] = storage[:4].view(2, 2).t()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "plain.pt")
        _archive(path, body, {"0": storage.numpy().tobytes()})
        tensors = read_torchscript_tensors(path)
    assert set(tensors) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(tensors[key], tensor), key


def test_a_pickle_with_a_reduce_payload_in_a_plain_pt_or_hf_bin_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": Payload()}, tmp_path / "plain.pt")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "clip"}')
    torch.save({"text_model.x": Payload()}, folder / "pytorch_model.bin")
    for path in (tmp_path / "plain.pt", folder):
        with pytest.raises(ScorerError, match="weights-only"):
            read_scorer_weights(path)
    assert not sentinel.exists()


# --- files that are not regular, JSON next to the weights ----------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory-named-pt", "socket"])
def test_a_scorer_path_that_is_not_a_regular_file_is_refused_unopened(tmp_path, kind):
    name = "clip.pt"
    {"fifo": hostile.make_fifo, "dev-zero": hostile.make_dev_zero_link, "socket": hostile.make_socket,
     "directory-named-pt": lambda folder, n: os.mkdir(os.path.join(folder, n))}[kind](str(tmp_path), name)
    feeder = hostile.FifoFeeder(str(tmp_path / name), "PK\x03\x04 not a zip") if kind == "fifo" else None
    try:
        with pytest.raises(ScorerError):
            read_scorer_weights(tmp_path / name)
    finally:
        if feeder:
            feeder.close()
    assert not (feeder and feeder.fed), "the FIFO was opened for reading (a reader without a writer hangs there)"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    model = tiny_vit_clip(seed=7)
    return model, save_open_clip(model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


CONFIG_LIKE = st.fixed_dictionaries({
    "embed_dim": st.sampled_from([32, 64, 10 ** 7]),
    "vision_cfg": st.fixed_dictionaries({"width": st.sampled_from([64, 10 ** 6]), "layers": st.sampled_from([2, 500]),
                                         "patch_size": st.sampled_from([8, 0]), "image_size": st.just(32),
                                         "mlp_ratio": st.sampled_from([4.0, 1e6])}),
    "text_cfg": st.fixed_dictionaries({"width": st.sampled_from([64, 10 ** 6]), "layers": st.just(2),
                                       "heads": st.sampled_from([1, 0]), "context_length": st.just(77),
                                       "vocab_size": st.just(49408)}),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(document=st.one_of(st.binary(max_size=40), st.text(max_size=40), st.just(hostile.deep_json()),
                          st.recursive(st.none() | st.integers() | st.text(max_size=5),
                                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                           max_size=3)),
                          CONFIG_LIKE, CONFIG_LIKE.map(lambda c: {"model_cfg": c})),
       sidecar=st.sampled_from(["tiny.json", "open_clip_config.json"]))
def test_any_json_next_to_the_weights_is_used_or_named(tiny_weights, document, sidecar):
    _, weights_path = tiny_weights
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tiny.safetensors")
        os.symlink(weights_path, path)
        raw = document if isinstance(document, bytes) else (
            document if isinstance(document, str) else json.dumps(document)).encode()
        with open(os.path.join(folder, sidecar), "wb") as handle:
            handle.write(raw)
        try:
            scorer = load_scorer(path, device="cpu")
        except ScorerError as error:
            assert folder in str(error)
            return
        assert scorer.score(comfy_images(1, 32, 32, seed=0), ["x"]).jaq.isfinite().all()


def test_malformed_transformers_config_is_named(tmp_path):
    for text, message in (("{", "not valid JSON"), ("[]", "not a CLIPModel"), (hostile.deep_json(), "nested"),
                          ('{"model_type": "clip"}', "no model.safetensors")):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(ScorerError, match=message):
            read_scorer_weights(tmp_path)


# --- the scorer's identity: what the calibration run log is keyed by -----------------------------------------

def _run_log_key(scorer):
    return settings_hash(CalibrationConfig(width=64, height=64).run_log_settings(model_hash="m", prompts_hash="p",
                                                                                scorer=scorer.identity()))


def test_the_same_weights_under_another_name_are_the_same_scorer(tiny_weights, tmp_path):
    _, path = tiny_weights
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(open(path, "rb").read())
    assert _run_log_key(load_scorer(path, device="cpu")) == _run_log_key(load_scorer(renamed, device="cpu"))


@pytest.fixture(scope="module")
def tiny_weights_key(tiny_weights):
    return _run_log_key(load_scorer(tiny_weights[1], device="cpu"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(key_index=st.integers(0, 10 ** 6), element=st.integers(0, 10 ** 6), delta=st.sampled_from([1e-3, -0.5, 2.0]))
def test_changed_weights_under_the_same_name_are_another_scorer(tiny_weights, tiny_weights_key, key_index, element,
                                                                delta):
    """A scorer file rewritten in place (the name every earlier run knew it by) must not reuse old scores."""
    _, path = tiny_weights
    tensors = load_file(path)
    floating = sorted(k for k, v in tensors.items() if v.is_floating_point())
    key = floating[key_index % len(floating)]
    before = tiny_weights_key
    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "scorer.safetensors")
        changed = tensors[key].clone().view(-1)
        changed[element % changed.numel()] += delta
        save_file({**tensors, key: changed.view(tensors[key].shape)}, target)
        assert _run_log_key(load_scorer(target, device="cpu")) != before


@pytest.mark.parametrize("option", [dict(k=3.0), dict(tc_transform="log"), dict(k_weights="tc"),
                                    dict(clip_score_convention="hessel"), dict(iqa_pairs=("sharpness",)),
                                    dict(quick_gelu=True), dict(dtype=torch.float64), dict(iqa_logit_scale=50.0)])
def test_changed_options_are_another_scorer(tiny_weights, option):
    _, path = tiny_weights
    assert _run_log_key(load_scorer(path, device="cpu", **option)) != _run_log_key(load_scorer(path, device="cpu"))
