"""Q-Sched presets: a calibrated schedule plus what it was calibrated for, as versioned JSON files.

Names never leave the preset folder (path separators, '..', leading dots and control characters are refused),
and neither do symlinks inside it: only regular files whose real path lies in the folder are read, size-checked
first (safe_files.py). Files are written atomically (temp file + os.replace). A corrupt, truncated, too deeply
nested or foreign file gives a PresetError naming the file and the problem; a preset calibrated for another model
loads only on request, with a warning. One name is one file, the name plus ".json": a name ending in ".json" is
refused, so the file dup.json.json can never pass for "dup.json" (dup.json's name); the list shows such a file
under its file name, as invalid.
"""
import datetime
import hashlib
import json
import logging
import math
import os
import re

from ..atomic_files import write_text_atomic
from ..safe_files import JSONDocumentError, UnsafeFileError, non_finite_path, parse_json, read_regular_file
from ..samplers.schedule import QSchedSchedule, ScheduleError, map_lists
from .heldout import VERDICTS

FORMAT = "qsched-preset"
SCHEMA_VERSION = 2            # 2: optional per-step "offset" on the noise prediction
READABLE_VERSIONS = (1, 2)    # version 1 files (no offset) load unchanged
EXTENSION = ".json"
MAX_BYTES = 1 << 20
log = logging.getLogger("qsched.presets")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_PRESETS = os.path.join(_ROOT, "presets")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+()\-]{0,127}$")


def _pack_version():
    try:
        with open(os.path.join(_ROOT, "pyproject.toml"), encoding="utf-8") as handle:
            match = re.search(r'^version\s*=\s*"([^"]+)"', handle.read(), re.MULTILINE)
        return match.group(1) if match else "unknown"
    except OSError:
        return "unknown"


PACK_VERSION = _pack_version()

# field -> (types, required); nested dicts are checked below.
_FIELDS = {
    "format": (str, True), "version": (int, True), "example": (bool, False), "notes": (str, False),
    "model": (dict, True), "quant": ((str, type(None)), False), "sampler": (str, True), "steps": (int, True),
    "c_x": (list, True), "c_eps": (list, True), "scorer": (dict, False), "prompts_hash": ((str, type(None)), False),
    "n_prompts": ((int, type(None)), False), "seed": ((int, type(None)), False), "cfg": ((int, float, type(None)), False),
    "scores": (dict, False), "search": (dict, False), "created": (str, False), "pack_version": (str, False),
    "offset": ((list, type(None)), False), "quantizer": ((dict, type(None)), False),
    "offset_map": ((list, type(None)), False),
}
_SINCE_VERSION = {"offset": 2, "quantizer": 2, "offset_map": 2}
_BACKEND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")


class PresetError(ValueError):
    """A preset that cannot be read, written or used; the message names the preset and the problem."""


class PresetModelMismatch(PresetError):
    """The preset was calibrated for another model (content hash differs)."""


def check_name(name):
    """Return the bare preset name (without .json) or raise PresetError: names never leave the folder."""
    if not isinstance(name, str):
        raise PresetError(f"preset name must be a string, got {type(name).__name__}")
    bare = name[: -len(EXTENSION)] if name.endswith(EXTENSION) else name
    if not bare.strip():
        raise PresetError(f"empty preset name {name!r}")
    if "\x00" in bare:
        raise PresetError(f"preset name {name!r} contains a NUL byte")
    if "/" in bare or "\\" in bare or ".." in bare or (os.sep in bare) or (os.altsep and os.altsep in bare):
        raise PresetError(f"preset name {name!r} contains a path separator or '..': names must stay inside the "
                          "preset folder")
    if bare.lower().endswith(EXTENSION):
        # "dup.json" (file dup.json.json) would read as the name of dup.json: one name, one file
        raise PresetError(f"preset name {name!r} is not allowed: a preset name cannot end in {EXTENSION!r} (the "
                          f"file name is the name plus one {EXTENSION!r})")
    if not _NAME.fullmatch(bare):
        raise PresetError(f"preset name {name!r} is not allowed: use 1-128 letters, digits, spaces and _ . + ( ) -, "
                          "starting with a letter or digit")
    return bare


def safe_preset_name(text):
    """A valid preset name made from free text: model names may contain '/', ':' or '..', start with '(', '+' or
    '-', be non-ASCII only or too long. When the text had to change, a short hash of all of it is appended, so two
    different texts never end up with one name (and the second calibration never overwrites the first)."""
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9 _.+()\-]", "_", text))
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned).rstrip(" ._")
    if cleaned and cleaned == text and len(cleaned) <= 128 and not cleaned.lower().endswith(EXTENSION):
        return check_name(cleaned)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return check_name(f"{cleaned[:128 - 11].rstrip(' ._')}-{digest}" if cleaned else f"calibration-{digest}")


def preset_path(folder, name):
    """Path of preset `name` inside `folder`; refuses names that would point anywhere else."""
    bare = check_name(name)
    folder = os.path.abspath(folder)
    path = os.path.join(folder, bare + EXTENSION)
    if os.path.dirname(os.path.abspath(path)) != folder:
        raise PresetError(f"preset name {name!r} resolves outside the preset folder")
    return path


def make_preset(schedule, *, model_name, model_hash=None, family=None, quant=None, sampler=None, scorer=None,
                scorer_k=None, prompts_hash=None, n_prompts=None, seed=None, cfg=None, identity_score=None,
                best_score=None, search=None, notes="", example=False, checks=None, quantizer=None):
    """Build a preset dict (schema version 2) for `schedule`; `sampler` defaults to the schedule's; the
    schedule's per-step offset, if any, is stored as "offset" (absent when the schedule has none). checks: the
    held-out verdict (and FP control) from calibration.heldout.TrustReport.to_dict(), kept under `scores`.
    quantizer: {"spec", "backend"[, "rounding"[, "smoothing"]]} of the quantized loader the model came from (absent
    when unknown)."""
    sampler = sampler or schedule.sampler
    preset = {
        "format": FORMAT, "version": SCHEMA_VERSION, "example": bool(example), "notes": notes,
        "model": {"name": model_name, "sha256": model_hash, "family": family},
        "quant": quant, "sampler": sampler, "steps": schedule.steps,
        "c_x": list(schedule.c_x), "c_eps": list(schedule.c_eps),
        **({"offset": [list(row) for row in schedule.offset]} if schedule.offset is not None else {}),
        **({"offset_map": map_lists(schedule.offset_map)} if schedule.offset_map is not None else {}),
        **({"quantizer": dict(quantizer)} if quantizer else {}),
        "scorer": {"name": scorer, "k": scorer_k}, "prompts_hash": prompts_hash, "n_prompts": n_prompts,
        "seed": seed, "cfg": cfg,
        "scores": {"identity": identity_score, "best": best_score, **(checks or {})},
        "search": search or {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pack_version": PACK_VERSION,
    }
    validate(preset)
    return preset


def validate(data, where="preset"):
    """Raise PresetError unless `data` is a well-formed preset of a schema version this pack reads."""
    if not isinstance(data, dict):
        raise PresetError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise PresetError(f"{where}: not a Q-Sched preset (format is {data.get('format')!r}, expected {FORMAT!r})")
    version = data.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise PresetError(f"{where}: schema version {version!r} is not supported (this pack reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; update the pack)")
    for key, (types, required) in _FIELDS.items():
        if key not in data:
            if required:
                raise PresetError(f"{where}: missing field {key!r}")
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise PresetError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    unknown = sorted(set(data) - set(_FIELDS))
    unknown += sorted(key for key, since in _SINCE_VERSION.items() if key in data and version < since)
    if unknown:
        raise PresetError(f"{where}: unknown fields {', '.join(unknown)}")
    if not isinstance(data["model"].get("name"), str) or not data["model"]["name"]:
        raise PresetError(f"{where}: model.name must be a non-empty string")
    for key in ("sha256", "family"):
        if not isinstance(data["model"].get(key), (str, type(None))):
            raise PresetError(f"{where}: model.{key} must be a string or null, got {data['model'][key]!r}")
    if not isinstance(data.get("scorer", {}).get("name"), (str, type(None))):
        raise PresetError(f"{where}: scorer.name must be a string or null, got {data['scorer']['name']!r}")
    for field_name, value in (("scores.identity", data.get("scores", {}).get("identity")),
                              ("scores.best", data.get("scores", {}).get("best")),
                              ("scorer.k", data.get("scorer", {}).get("k"))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise PresetError(f"{where}: {field_name} must be a finite number or null, got {value!r}")
    _validate_checks(data.get("scores", {}), where)
    _validate_quantizer(data.get("quantizer"), where)
    try:
        schedule = schedule_of(data)
    except ScheduleError as error:
        raise PresetError(f"{where}: {error}") from error
    if schedule.steps != data["steps"]:
        raise PresetError(f"{where}: steps is {data['steps']} but c_x/c_eps have {schedule.steps} values")
    bad = non_finite_path(data)
    if bad is not None:
        raise PresetError(f"{where}: {bad} is not a finite number (JSON has no NaN or infinity)")
    return data


def _validate_checks(scores, where):
    """The optional held-out verdict and FP control under `scores` (older presets have neither)."""
    for key in ("heldout", "fp_control"):
        if key not in scores or scores[key] is None:
            continue
        check = scores[key]
        if not isinstance(check, dict) or check.get("verdict") not in VERDICTS:
            raise PresetError(f"{where}: scores.{key} must be an object whose verdict is one of "
                              f"{', '.join(map(repr, VERDICTS))}")
        for name in ("difference", "fp_gain", "gap"):
            interval = check.get(name, {}).get("ci") if isinstance(check.get(name), dict) else None
            if name in check and not (isinstance(interval, list) and len(interval) == 2 and all(
                    v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in interval)):
                raise PresetError(f"{where}: scores.{key}.{name}.ci must be two finite numbers or nulls")


ROUNDINGS = ("GPTQ",)  # a calibrated load's rounding (quant.calibrated.GPTQ_ROUNDING)


def _validate_quantizer(quantizer, where):
    """The optional record of the quantizer the preset was fitted on: {"spec": canonical spec name, "backend"[,
    "rounding": "GPTQ"[, "smoothing": "SmoothQuant alpha 0.5"]]} (rounding absent: round-to-nearest; smoothing
    absent: none)."""
    if quantizer is None:
        return
    from ..quant.smoothing import NAME as SMOOTHING
    from ..quant.spec import QuantSpec, QuantSpecError
    if set(quantizer) - {"rounding", "smoothing"} != {"spec", "backend"} or not isinstance(quantizer["spec"], str) \
            or not isinstance(quantizer["backend"], str) or not _BACKEND_NAME.fullmatch(quantizer["backend"]):
        raise PresetError(f"{where}: quantizer must be {{\"spec\": <spec>, \"backend\": <backend name>}}")
    if "rounding" in quantizer and quantizer["rounding"] not in ROUNDINGS:
        raise PresetError(f"{where}: quantizer.rounding must be {' or '.join(map(repr, ROUNDINGS))} (absent: "
                          f"round-to-nearest), got {quantizer['rounding']!r}")
    if "smoothing" in quantizer and (quantizer["smoothing"] != SMOOTHING or "rounding" not in quantizer):
        raise PresetError(f"{where}: quantizer.smoothing must be {SMOOTHING!r} beside "
                          f"quantizer.rounding (absent: no smoothing), got {quantizer['smoothing']!r}")
    try:
        canonical = QuantSpec.parse(quantizer["spec"]).name
    except QuantSpecError as error:
        raise PresetError(f"{where}: quantizer.spec: {error}") from None
    if canonical != quantizer["spec"]:
        raise PresetError(f"{where}: quantizer.spec {quantizer['spec']!r} is not written as {canonical!r}")


def describe_quantizer(quantizer):
    if not quantizer:
        return "no Q-Sched quantizer"
    rounding = f", {quantizer['rounding']} rounding" if quantizer.get("rounding") else ""
    smoothing = f", {quantizer['smoothing']} smoothing" if quantizer.get("smoothing") else ""
    return f"{quantizer['spec']} ({quantizer['backend']} backend{rounding}{smoothing})"


def quantizer_mismatch(data, quantizer):
    """A one-line warning when the preset records the quantizer it was fitted on and `quantizer` (the model's,
    None for a model the quantized loaders did not make) is another; None when they agree or the preset says nothing
    (older presets)."""
    recorded = data.get("quantizer")
    if not recorded or (quantizer and dict(quantizer) == recorded):
        return None
    return (f"preset {data['model']['name']!r} was fitted on {describe_quantizer(recorded)}, this model has "
            f"{describe_quantizer(quantizer)}: its coefficients correct another quantizer's error")


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def schedule_of(data):
    """The preset's QSchedSchedule, carrying the sampler it was tuned for and a label naming the model."""
    quant = f" {data['quant']}" if data.get("quant") else ""
    label = f"{data['model']['name']}{quant} {data['sampler']} {data['steps']} steps"
    return QSchedSchedule.from_lists(data["c_x"], data["c_eps"], sampler=data["sampler"], label=label,
                                     offset=data.get("offset"), offset_map=data.get("offset_map"))


def read_preset_file(path, folder=None):
    """Read and validate one preset file (a regular file inside `folder`, if given, after resolving symlinks);
    PresetError names the file and what is wrong with it."""
    where = f"preset {os.path.basename(path)}"
    try:
        raw = read_regular_file(path, MAX_BYTES, folder)
    except FileNotFoundError as error:
        raise PresetError(f"{where}: no such preset in {os.path.dirname(path)}") from error
    except UnsafeFileError as error:
        raise PresetError(f"{where}: {error}") from error
    except OSError as error:
        raise PresetError(f"{where}: cannot be read ({error})") from error
    try:
        data = parse_json(raw, allow_nan=True)   # validate() names a field holding NaN or infinity
    except JSONDocumentError as error:
        text = raw.decode("utf-8", "replace").strip()
        truncated = " (the file looks truncated)" if text and text[-1] != "}" and "not valid" in str(error) else ""
        raise PresetError(f"{where}: {error}{truncated}") from error
    return validate(data, where)


def load_preset(folder, name, model_hash=None, allow_model_mismatch=False):
    """Load preset `name` from `folder`. If `model_hash` is given and the preset records another one, raise
    PresetModelMismatch unless allow_model_mismatch, in which case log a warning and load it anyway."""
    data = read_preset_file(preset_path(folder, name), folder)
    check_model(data, model_hash, allow_model_mismatch, name)
    return data


def check_model(data, model_hash, allow_model_mismatch=False, name="preset"):
    recorded = data["model"].get("sha256")
    if model_hash is None or recorded is None or recorded == model_hash:
        return
    message = (f"preset {name!r} was calibrated for model {data['model']['name']!r} (hash {recorded[:12]}) but the "
               f"loaded model's hash is {model_hash[:12]}")
    if not allow_model_mismatch:
        raise PresetModelMismatch(message + "; enable 'allow model mismatch' to use it anyway")
    log.warning("%s; using it anyway as requested", message)


def save_preset(folder, name, preset):
    """Validate and write `preset` as `folder/name.json` atomically; returns the path."""
    path = preset_path(folder, name)
    validate(preset, f"preset {name!r}")
    return write_text_atomic(path, json.dumps(preset, indent=2) + "\n")


def summary(data):
    """The one summary of a loaded preset: what the preset lists (list_presets, the web extension's routes and the
    Load Q-Sched Preset panel) show; JSON-safe."""
    scorer = data.get("scorer") if isinstance(data.get("scorer"), dict) else {}
    scores = data.get("scores") or {}
    return {"model": data["model"]["name"], "model_sha256": data["model"].get("sha256"),
            "family": data["model"].get("family"), "quant": data.get("quant"), "sampler": data["sampler"],
            "steps": data["steps"], "example": bool(data.get("example", False)), "scores": scores,
            "scorer": scorer.get("name"), "k": _finite_or_none(scorer.get("k")),
            "identity_score": _finite_or_none(scores.get("identity")), "best_score": _finite_or_none(scores.get("best")),
            "created": data.get("created"), "c_x": data["c_x"], "c_eps": data["c_eps"], "offset": data.get("offset"),
            "quantizer": data.get("quantizer")}


def _finite_or_none(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def list_presets(folder):
    """Every *.json file in `folder`, sorted by name: {'name', 'valid', 'error', 'summary'} (error/summary None).
    Only regular files (or links to them) are read; FIFOs, devices, sockets and folders are skipped unread."""
    if not os.path.isdir(folder):
        return []
    entries = []
    with os.scandir(folder) as scan:
        files = sorted((entry.name for entry in scan if _is_regular_file(entry)))
    for file_name in files:
        if not file_name.endswith(EXTENSION) or file_name.startswith("."):
            continue
        name = file_name[: -len(EXTENSION)]
        try:
            if check_name(name) != name:   # "dup.json" of dup.json.json: the name of dup.json
                raise PresetError(f"preset name {name!r} is not allowed: a preset name cannot end in {EXTENSION!r}")
            path = preset_path(folder, name)
        except PresetError as error:   # listed under its file name, which no lookup resolves to another file
            entries.append({"name": file_name, "valid": False, "error": str(error), "summary": None})
            continue
        try:
            data = read_preset_file(path, folder)
            entries.append({"name": name, "valid": True, "error": None, "summary": summary(data)})
        except PresetError as error:
            entries.append({"name": name, "valid": False, "error": str(error), "summary": None})
    return entries


def _is_regular_file(entry):
    try:
        return entry.is_file()   # follows symlinks; read_preset_file then refuses those leading outside
    except OSError:
        return False
