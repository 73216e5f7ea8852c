"""Hostile and careless input to the preset folder and the preset files (issue 14), property-based.

Names, JSON documents, schedule values and files of every type in the folder are generated; each must end in a
clear PresetError or a validated preset, never a crash, a stall, a read outside the folder or a change to other
files. Also: saves keep the preset's file mode and clean up after killed saves; a run log set aside never
replaces an earlier one.
"""
import json
import math
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile_files as hostile
from comfyui_qsched.calibration import presets as P
from comfyui_qsched.calibration.runlog import RunLog
from comfyui_qsched.samplers import QSchedSchedule, ScheduleError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
ALLOWED_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.+()-")


def _valid(**changes):
    return json.loads(hostile.valid_preset_text(**changes))


# --- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["good\n", "good\r", "good\n.json", "a\nb", "good\t", " good", "g\u00e9"])
def test_names_with_control_characters_or_outside_the_charset_are_refused(tmp_path, name):
    with pytest.raises(P.PresetError, match="not allowed"):
        P.check_name(name)
    with pytest.raises(P.PresetError):
        P.save_preset(tmp_path, name, _valid())
    assert os.listdir(tmp_path) == []


@SETTINGS
@given(name=st.text(max_size=140) | st.sampled_from(["x\n", "../x", "x/..", "..", ".", "a..b", "con", "a.json\n",
                                                     "x.json.json", "(x)", "+x", "-x"]))
def test_any_name_either_stays_in_the_folder_or_is_refused(name):
    with tempfile.TemporaryDirectory() as folder:
        try:
            bare = P.check_name(name)
        except P.PresetError as error:
            assert str(error)
            return
        assert set(bare) <= ALLOWED_NAME_CHARS and bare[0].isalnum() and ".." not in bare and len(bare) <= 128
        path = P.save_preset(folder, name, _valid())
        assert os.path.dirname(path) == folder and os.listdir(folder) == [bare + ".json"]
        assert P.load_preset(folder, name)["c_x"] == [0.95, 1.0]


@SETTINGS
@given(text=st.text(max_size=300))
def test_default_preset_names_are_valid_and_do_not_collide(text):
    """Model names from the wild (non-ASCII, '(' / '+' / '-' first, long) give valid names; two texts never share
    one (the second calibration would overwrite the first)."""
    name = P.safe_preset_name(text)
    assert P.check_name(name) == name
    other = P.safe_preset_name(text + "x")
    assert other != name


@pytest.mark.parametrize("model", ["(beta) model", "+plus", "-minus", "\u6a21\u578b", "\u00e9t\u00e9", "___",
                                   "a" * 200])
def test_default_preset_names_for_model_names_that_were_refused(model):
    text = f"{model}-W4A8-lcm-4steps"
    name = P.safe_preset_name(text)
    assert P.check_name(name) == name
    assert name != P.safe_preset_name(f"{model}-W4A8-lcm-8steps")   # long names used to be cut to one name


def test_long_model_names_sharing_a_prefix_get_two_presets(tmp_path):
    first = P.safe_preset_name("m" * 150 + "-one-W4A8-lcm-4steps")
    second = P.safe_preset_name("m" * 150 + "-two-W4A8-lcm-4steps")
    P.save_preset(tmp_path, first, _valid(notes="one"))
    P.save_preset(tmp_path, second, _valid(notes="two"))
    assert sorted(P.load_preset(tmp_path, n)["notes"] for n in (first, second)) == ["one", "two"]


# --- JSON documents ----------------------------------------------------------------------------------------

FIELDS = [("format",), ("version",), ("model",), ("model", "name"), ("model", "sha256"), ("model", "family"),
          ("quant",), ("sampler",), ("steps",), ("c_x",), ("c_eps",), ("scorer",), ("scorer", "name"),
          ("scorer", "k"), ("scores",), ("scores", "best"), ("scores", "identity"), ("n_prompts",), ("seed",),
          ("cfg",), ("search",), ("created",), ("notes",), ("example",)]


@SETTINGS
@given(path=st.sampled_from(FIELDS), value=JSON_VALUES)
def test_any_value_in_any_field_is_validated_or_named(path, value):
    data = _valid()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "p.json"), "w") as handle:
            json.dump(data, handle)
        try:
            loaded = P.load_preset(folder, "p", model_hash="0" * 64)
        except P.PresetError as error:
            assert "preset p.json" in str(error)
            return
        for key in ("c_x", "c_eps"):
            assert all(type(v) in (int, float) and math.isfinite(v) and v > 0 for v in loaded[key])
        assert loaded["model"].get("sha256") in (None, "0" * 64)
        assert P.schedule_of(loaded).steps == loaded["steps"]
        json.dumps(P.summary(loaded), allow_nan=False)


@SETTINGS
@given(document=JSON_VALUES | st.text(max_size=50) | st.binary(max_size=50))
def test_any_document_is_a_preset_error_or_a_preset(document):
    with tempfile.TemporaryDirectory() as folder:
        raw = document if isinstance(document, bytes) else (
            document if isinstance(document, str) else json.dumps(document)).encode("utf-8", "surrogatepass")
        with open(os.path.join(folder, "p.json"), "wb") as handle:
            handle.write(raw)
        with pytest.raises(P.PresetError, match="preset p.json"):
            P.load_preset(folder, "p")


@pytest.mark.parametrize("value", [["1.1", "1.0"], [True, 1.0], [1.0, False], [{"v": 1}, 1.0], [[1.1], 1.0],
                                   [None, 1.0]])
def test_strings_and_booleans_in_coefficients_are_refused(tmp_path, value):
    (tmp_path / "p.json").write_text(hostile.valid_preset_text(c_x=value))
    with pytest.raises(P.PresetError, match=r"c_x must be a list of numbers"):
        P.load_preset(tmp_path, "p")


@SETTINGS
@given(values=st.lists(st.one_of(st.floats(0.1, 3), st.integers(1, 3), st.booleans(), st.text(max_size=5),
                                 st.none()), min_size=1, max_size=6))
def test_schedule_values_are_numbers_or_refused(values):
    try:
        schedule = QSchedSchedule.from_lists(values, [1.0] * len(values))
    except ScheduleError as error:
        assert any(isinstance(v, (bool, str, type(None))) for v in values), error
        return
    assert not any(isinstance(v, (bool, str, type(None))) for v in values)
    assert schedule.c_x == tuple(float(v) for v in values)


@pytest.mark.parametrize("sha", [123, 1.5, True, [1], {"a": 1}])
def test_a_non_string_model_hash_is_a_preset_error_not_a_crash(tmp_path, sha):
    (tmp_path / "p.json").write_text(hostile.valid_preset_text(model={"name": "m", "sha256": sha, "family": None}))
    with pytest.raises(P.PresetError, match="model.sha256"):
        P.load_preset(tmp_path, "p", model_hash="f" * 64)


@pytest.mark.parametrize("text, message", [
    (hostile.deep_json(), "nested more than"),
    ('{"a":' * 3000 + "1" + "}" * 3000, "nested more than"),
    (hostile.valid_preset_text(search={"x": [[[[[[[[[[]]]]]]]]]]} ).replace("[]", hostile.deep_json(80)),
     "nested more than"),
    (hostile.valid_preset_text(search={"x": float("nan")}), r"search.x is not a finite number"),
    (hostile.valid_preset_text()[:-1] + ', "steps": 2}', "duplicate key 'steps'"),
    ('{"steps": ' + "9" * 5000 + "}", "not valid JSON"),
])
def test_documents_that_would_crash_a_reader_are_named(tmp_path, text, message):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(P.PresetError, match=message):
        P.load_preset(tmp_path, "p")
    entry, = P.list_presets(tmp_path)
    assert entry["valid"] is False and entry["error"].startswith("preset p.json: ")


# --- files of every type in the folder ---------------------------------------------------------------------

@SETTINGS
@given(kinds=st.lists(st.sampled_from(sorted(hostile.NEVER_READ) + sorted(hostile.REFUSED_CONTENT) + ["outside"]),
                      min_size=1, max_size=5, unique=True))
def test_the_list_reads_only_regular_files_inside_the_folder(kinds):
    with tempfile.TemporaryDirectory() as base:
        folder = os.path.join(base, "presets")
        os.mkdir(folder)
        hostile.make_regular(folder, "good.json", hostile.valid_preset_text())
        outside = os.path.join(base, "secret.json")
        hostile.make_regular(base, "secret.json", hostile.valid_preset_text(notes="secret"))
        feeders = []
        for kind in kinds:
            name = f"{kind}.json"
            if kind == "outside":
                hostile.make_link_outside(folder, name, outside)
            elif kind in hostile.NEVER_READ:
                hostile.NEVER_READ[kind](folder, name)
                if kind == "fifo":
                    feeders.append(hostile.FifoFeeder(os.path.join(folder, name), hostile.valid_preset_text()))
            else:
                hostile.REFUSED_CONTENT[kind](folder, name)
        before = hostile.snapshot(base)
        try:
            entries = {entry["name"]: entry for entry in P.list_presets(folder)}
        finally:
            for feeder in feeders:
                feeder.close()
        assert not any(feeder.fed for feeder in feeders), "the FIFO was opened for reading"
        assert entries["good"]["valid"]
        for kind in kinds:
            entry = entries.get(kind)
            if kind in hostile.NEVER_READ:
                assert entry is None, entry      # never opened: not listed
            else:
                assert entry is not None and entry["valid"] is False and entry["error"], entry
        if "outside" in kinds:
            assert "link leading outside" in entries["outside"]["error"]
        assert hostile.snapshot(base) == before


@pytest.mark.parametrize("kind", sorted(hostile.NEVER_READ) + ["outside"])
def test_loading_a_hostile_entry_by_name_is_a_preset_error(tmp_path, kind):
    folder = tmp_path / "presets"
    folder.mkdir()
    (tmp_path / "secret.json").write_text(hostile.valid_preset_text(notes="secret"))
    if kind == "outside":
        hostile.make_link_outside(str(folder), "x.json", str(tmp_path / "secret.json"))
    else:
        hostile.NEVER_READ[kind](str(folder), "x.json")
    feeder = hostile.FifoFeeder(str(folder / "x.json"), hostile.valid_preset_text()) if kind == "fifo" else None
    try:
        with pytest.raises(P.PresetError, match="preset x.json"):
            P.load_preset(folder, "x")
    finally:
        if feeder:
            feeder.close()
    assert not (feeder and feeder.fed), "the FIFO was opened for reading"


def test_a_link_to_a_preset_inside_the_folder_is_read(tmp_path):
    hostile.make_regular(str(tmp_path), "real.json", hostile.valid_preset_text(notes="real"))
    os.symlink("real.json", tmp_path / "alias.json")
    assert P.load_preset(tmp_path, "alias")["notes"] == "real"
    assert {e["name"]: e["valid"] for e in P.list_presets(tmp_path)} == {"alias": True, "real": True}


# --- writes: file mode, leftovers of killed saves ----------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o664, 0o600])
def test_resaving_keeps_the_file_mode(tmp_path, mode):
    path = P.save_preset(tmp_path, "p", _valid())
    os.chmod(path, mode)
    P.save_preset(tmp_path, "p", _valid(notes="again"))
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert P.load_preset(tmp_path, "p")["notes"] == "again"


def test_a_new_preset_gets_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = P.save_preset(tmp_path, "p", _valid())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


_KILLED_SAVE = """
import os, sys, time
sys.path.insert(0, {root!r})
import qsched
from comfyui_qsched.atomic_files import write_atomic

def write(temporary):
    with open(temporary, "w") as handle:
        handle.write('{{"half": ')
    print("written", flush=True)
    time.sleep(600)

write_atomic(os.path.join({folder!r}, "p.json"), write)
"""


def _kill_a_save_midway(folder):
    process = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE.format(root=ROOT, folder=str(folder))],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "written"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.pid


def test_leftovers_of_killed_saves_are_not_listed_and_are_removed_by_the_next_save(tmp_path):
    P.save_preset(tmp_path, "p", _valid(notes="before"))
    _kill_a_save_midway(tmp_path)
    _kill_a_save_midway(tmp_path)
    leftovers = sorted(set(os.listdir(tmp_path)) - {"p.json"})
    assert len(leftovers) == 2                                   # what a killed save leaves behind
    assert [e["name"] for e in P.list_presets(tmp_path)] == ["p"]
    assert P.load_preset(tmp_path, "p")["notes"] == "before"     # the old preset is intact
    old = time.time() - 3600
    for name in leftovers:
        os.utime(tmp_path / name, (old, old))
    (tmp_path / "notes.txt.abc.tmp").write_text("not ours")      # a user's file is never touched
    P.save_preset(tmp_path, "q", _valid())
    assert sorted(os.listdir(tmp_path)) == ["notes.txt.abc.tmp", "p.json", "q.json"]


def test_a_temporary_of_a_live_writer_is_kept(tmp_path):
    from comfyui_qsched import atomic_files
    live = tmp_path / f".p.json.{os.getpid()}.{'0' * 16}.tmp"
    live.write_text("in progress")
    old = time.time() - 3600
    os.utime(live, (old, old))
    assert atomic_files.remove_stale_temporaries(str(tmp_path)) == []
    assert live.exists()


# --- run log set aside -------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(headers=st.lists(st.sampled_from(["garbage", "", "{}", '{"kind": "header", "settings_hash": "abc"}',
                                         '{"kind": "header", "settings_hash": "../../escape"}', "[" * 5000]),
                        min_size=1, max_size=5))
def test_setting_a_run_log_aside_never_replaces_an_earlier_one(headers):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "run.jsonl")
        written = []
        for number, header in enumerate(headers):
            text = f"{header}\n{{\"run\": {number}}}\n"
            with open(path, "w") as handle:
                handle.write(text)
            written.append(text)
            RunLog(path, {"seed": 1}).close()
        kept = []
        for name in os.listdir(folder):
            assert os.path.dirname(os.path.realpath(os.path.join(folder, name))) == os.path.realpath(folder)
            if name != "run.jsonl":
                with open(os.path.join(folder, name)) as handle:
                    kept.append(handle.read())
        assert sorted(kept) == sorted(written)
