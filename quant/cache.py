"""Cache of quantized weights in safetensors, keyed by the source file's content hash + spec + policy + backend
(+ the calibration settings of a calibrated, GPTQ-rounded load).

Per quantized layer it stores `<layer>.weight` (packed codes), `<layer>.weight_scale` (float32 per channel, float16
per group, as the layer keeps them) and `<layer>.comfy_quant`
(a uint8 tensor holding JSON, the per-layer metadata convention of newer ComfyUI checkpoints; the format names
are this pack's own, `qsched_int8` / `qsched_int4_packed` / `qsched_fp8_e4m3`, which ComfyUI itself does not
decode), for a spec with a low-rank branch `<layer>.lowrank_down` / `<layer>.lowrank_up` (16-bit factors), and for a
smoothed layer `<layer>.input_divisor` (float32, its metadata names the smoothing). A smoothed load's key holds the
smoothing (the calibration settings), so files of loads without it, older ones included, are never read for it. Files
are written atomically; a file whose header or tensors do not match (also one written before the branch existed)
is reported and rebuilt."""
import hashlib
import json
import logging
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic_files import write_atomic
from ..tensor_files import TensorFileError, check_regular, check_safetensors, name_list, non_finite_names
from .apply import GPTQ_MARK, quantize_module
from .calibrated import GPTQ_ROUNDING, mark_calibrated, quantize_calibrated
from .registry import get_backend
from .layers import PackedWeightMixin
from .smoothing import NAME as SMOOTHING_NAME
from .policy import DEFAULT_POLICY, LayerPolicy
from .spec import QuantSpec

# 2: group-wise scales stored in float16 (1: float32). Part of the key, so a version-1 file is never read for a
# version-2 load: the load quantizes again and writes its own file.
FORMAT_VERSION = "2"
_HASHES = {}


class CacheError(ValueError):
    pass


def file_sha256(path):
    """Content hash of a file, remembered per (path, size, mtime) for this process."""
    check_regular(path, "model file")
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _policy(policy):
    return LayerPolicy.parse(policy) if isinstance(policy, str) else (policy or DEFAULT_POLICY)


def cache_identity(source_sha256, spec, policy, backend, calibration=None):
    """What a cache file must have been made for. calibration: the settings a calibrated (GPTQ) rounding's moments
    came from (JSON values), so that other settings never pick up its codes, nor a nearest-rounded load them."""
    identity = {"qsched_format": FORMAT_VERSION, "source_sha256": source_sha256, "spec": QuantSpec.parse(spec).name,
                "policy": repr(_policy(policy)), "backend": backend}
    if calibration is not None:
        identity["calibration"] = json.dumps({"rounding": GPTQ_ROUNDING, **calibration}, sort_keys=True,
                                             ensure_ascii=False)
    return identity


def cache_path(cache_dir, source_path, identity):
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(source_path))[0]
    return os.path.join(cache_dir, f"{stem}.{identity['spec']}.{identity['backend']}.{key}.safetensors")


def _layer_format(layer):
    if layer.weight.dtype == torch.uint8:
        return "qsched_int4_packed"
    return "qsched_int8" if layer.weight.dtype == torch.int8 else "qsched_fp8_e4m3"


def save_cache(path, module, identity, gptq_rounded=()):
    """gptq_rounded: the layers whose codes GPTQ rounded (their metadata says so; the others rounded to nearest)."""
    tensors = {}
    for name, layer in module.named_modules():
        if isinstance(layer, PackedWeightMixin) and layer.quant_spec is not None:
            spec = layer.quant_spec
            info = {"format": _layer_format(layer), "spec": spec.name, "w_bits": spec.w_bits, "a_bits": spec.a_bits,
                    "group_size": spec.group_size, "activations": spec.act_granularity,
                    "activation_group_size": spec.act_group_size, "rank": spec.rank}
            if name in gptq_rounded:
                info["rounding"] = GPTQ_ROUNDING
            tensors[f"{name}.weight"] = layer.weight.detach().cpu().contiguous()
            tensors[f"{name}.weight_scale"] = layer.weight_scale.detach().cpu().contiguous()
            if spec.rank:
                tensors[f"{name}.lowrank_down"] = layer.lowrank_down.detach().cpu().contiguous()
                tensors[f"{name}.lowrank_up"] = layer.lowrank_up.detach().cpu().contiguous()
            if layer.smoothing_divisor is not None:
                info["smoothing"] = SMOOTHING_NAME
                tensors[f"{name}.input_divisor"] = layer.smoothing_divisor.detach().cpu().contiguous()
            tensors[f"{name}.comfy_quant"] = torch.tensor(list(json.dumps(info).encode()), dtype=torch.uint8)
    write_atomic(path, lambda temporary: save_file(tensors, temporary, metadata=identity))


def read_cache(path, identity, gptq_rounded=None):
    """{layer: (spec name, packed, scales, down, up, divisor)} from a cache file (down, up None where the file holds
    no branch, divisor None for a layer that is not smoothed), after checking its header against `identity`.
    gptq_rounded: a set, if given, that takes the names of the layers whose codes GPTQ rounded."""
    try:
        check_safetensors(path, "cache file")
    except TensorFileError as error:
        raise CacheError(f"cache file {path} is unreadable: {str(error).removeprefix(f'cache file {path} ')}") \
            from None
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            wrong = sorted(k for k, v in identity.items() if metadata.get(k) != v)
            if wrong:
                raise CacheError(f"cache file {path} was made for another {', '.join(wrong)}")
            stored, keys = {}, set(handle.keys())
            for key in keys:
                if key.endswith(".comfy_quant"):
                    name = key[: -len(".comfy_quant")]
                    info = json.loads(bytes(handle.get_tensor(key).tolist()).decode())
                    branch = tuple(handle.get_tensor(f"{name}.{factor}") if f"{name}.{factor}" in keys else None
                                   for factor in ("lowrank_down", "lowrank_up"))
                    smoothed = f"{name}.input_divisor" in keys
                    if smoothed != (info.get("smoothing") == SMOOTHING_NAME):
                        raise CacheError(f"cache file {path}: layer {name!r} has " + (
                            "a smoothing divisor its metadata does not name" if smoothed else
                            f"no smoothing divisor, but its metadata names {info.get('smoothing')!r}"))
                    divisor = handle.get_tensor(f"{name}.input_divisor") if smoothed else None
                    stored[name] = (info["spec"], handle.get_tensor(f"{name}.weight"),
                                    handle.get_tensor(f"{name}.weight_scale"), *branch, divisor)
                    if gptq_rounded is not None and info.get("rounding") == GPTQ_ROUNDING:
                        gptq_rounded.add(name)
    except CacheError:
        raise
    except Exception as error:  # a truncated or foreign file: safetensors/JSON errors of many kinds
        raise CacheError(f"cache file {path} is unreadable: {error}") from error
    if not stored:
        raise CacheError(f"cache file {path} holds no quantized layers")
    bad = non_finite_names({name: scale for name, (_, _, scale, *_) in stored.items()})
    bad += non_finite_names({name: packed for name, (_, packed, *_) in stored.items()})
    bad += non_finite_names({f"{name}.lowrank_{part}": factor for name, (*_, down, up, _) in stored.items()
                             for part, factor in (("down", down), ("up", up)) if factor is not None})
    bad += non_finite_names({f"{name}.input_divisor": divisor for name, (*_, divisor) in stored.items()
                             if divisor is not None})
    if bad:
        raise CacheError(f"cache file {path} holds NaN or infinite values in layers {name_list(sorted(set(bad)))}")
    return stored


def quantize_cached(module, spec, source_path, cache_dir, policy=None, backend="simulate", device=None,
                    compute_device=None, calibration=None):
    """quantize_module, reusing (or writing) a cache of the quantized weights in `cache_dir`.
    calibration: (settings, round_layers) for calibrated rounding (quant/calibrated.py): the settings are part of
    the cache key; round_layers(layers) runs the calibration, on a miss only.
    Returns (report, status) with status 'hit', 'written' or 'rebuilt (<why>)'."""
    quantizer = get_backend(backend)

    def build():
        if calibration is None:
            return quantize_module(module, spec, _policy(policy), backend, device, compute_device=compute_device)
        return quantize_calibrated(module, spec, _policy(policy), backend, device, calibration[1],
                                   compute_device=compute_device)

    if not quantizer.cacheable:
        return build(), f"not cached (backend {backend})"
    identity = cache_identity(file_sha256(source_path), spec, policy, backend,
                              None if calibration is None else calibration[0])
    path = cache_path(cache_dir, source_path, identity)
    status = "written"
    if os.path.exists(path):
        try:
            rounded = set()
            stored = read_cache(path, identity, rounded)
            report = quantize_module(module, spec, _policy(policy), backend, device, stored=stored)
            return mark_calibrated(report, rounded), "hit"
        except ValueError as error:
            logging.warning("Q-Sched: rebuilding quantized cache: %s", error)
            status = f"rebuilt ({error})"
    report = build()
    save_cache(path, module, identity, {layer.name for layer in report.layers
                                        if layer.backend and layer.backend.endswith(GPTQ_MARK)})
    return report, status
