"""Calibrated rounding of a whole backbone in passes: the input moments E[x xᵀ] of every layer the plan quantizes
would not fit in memory at once on a large model (FLUX: [in, in] float32 per layer, tens of GB together), so the
layers are split into passes whose moments fit a budget (gptq.plan_passes). Each pass runs the same calibration
(`run()`: deterministic, the same prompts and noise) with hooks on its layers only, then rounds those layers by
GPTQ and frees their moments. The model stays in full precision until every pass is done, so every pass sees the
FP model's activations and the codes equal those of one pass over all layers; they are installed by
quantize_module(calibrated=...). Smoothing (quant/smoothing.py) takes each layer's factors from its own moments and
only changes what is rounded (W diag(s) against D⁻¹ H D⁻¹), never the float model that later passes run, so
several passes still give the codes of one."""
from dataclasses import replace

import torch

from . import gptq, smoothing
from .apply import GPTQ_MARK, layer_plan, quantize_module
from .registry import get_backend

GPTQ_ROUNDING = "GPTQ"  # the rounding a calibrated load records (presets: quantizer.rounding); absent = nearest


def gptq_layers(module, spec, policy=None, backend="simulate", device=None):
    """{layer name: (fitted spec, stored layout)} of the layers the plan quantizes whose codes GPTQ can round: Linear
    and ungrouped Conv2d layers the backend stores as integer codes (not fp8 bytes). The others round to nearest."""
    if not getattr(get_backend(backend), "cacheable", False):
        raise ValueError(f"backend {backend!r} quantizes in its own library and cannot take calibrated rounding "
                         "(GPTQ); use 'simulate', 'int8' or 'auto'")
    quantizer, decisions = layer_plan(module, spec, policy, backend, device)
    layers = {}
    for decision in decisions:
        if decision.spec is None:
            continue
        layer = module.get_submodule(decision.name)
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or getattr(layer, "groups", 1) != 1:
            continue
        spec_here = quantizer.effective_spec(layer, decision.spec)
        layout = quantizer.layout(layer, spec_here)
        if layout[0] in gptq.INTEGER_CODES:
            layers[decision.name] = (spec_here, layout)
    return layers


def plan_module_passes(module, names, budget_bytes, device):
    """gptq.plan_passes over `names` (in the module's order), each layer's accumulator counted on `device`."""
    sizes = [(name, gptq.accumulator_bytes(gptq.moment_columns(module.get_submodule(name)), device))
             for name in names]
    return gptq.plan_passes(sizes, budget_bytes)


def round_in_passes(module, layers, run, budget_bytes, accumulate_device, compute_device=None, keep_device="cpu",
                    on_pass=None, should_stop=None, undersampled=None, smooth=False):
    """{layer name: (spec name, packed codes, scales[, down, up])} of `layers` (gptq_layers' result) rounded by GPTQ
    against their input moments, collected over as many runs of `run()` as gptq.plan_passes makes for
    `budget_bytes` (accumulators counted on `accumulate_device`, where the model's activations are). The results are
    kept on `keep_device`. on_pass(index, count, names) is called before each pass; should_stop() may raise to
    interrupt (checked between passes and layers). A layer the calibration never reached is an error; a layer with
    fewer calibration rows than gptq.enough_rows asks for is left out (it rounds to nearest) and recorded in
    `undersampled` (a dict, if given: name -> (rows, columns)). smooth: SmoothQuant's migration on every layer GPTQ
    rounds (quant/smoothing.py; the entries are then (spec name, packed, scales, down or None, up or None, s))."""
    passes = plan_module_passes(module, list(layers), budget_bytes, accumulate_device)
    rounded = {}
    undersampled = {} if undersampled is None else undersampled
    for index, names in enumerate(passes):
        if should_stop is not None:
            should_stop()
        if on_pass is not None:
            on_pass(index, len(passes), names)
        with gptq.InputMoments(module, names) as moments:
            run()
        for name in names:
            if should_stop is not None:
                should_stop()
            rows = moments.counts.get(name, 0)
            hessian = moments.pop_hessian(name)
            if hessian is None:
                raise ValueError(f"layer {name!r}: the calibration run never went through it (no input moments)")
            if not gptq.enough_rows(rows, hessian.shape[0]):
                undersampled[name] = (rows, hessian.shape[0])   # rounds to nearest (gptq.MIN_ROWS_PER_COLUMN)
                continue
            spec, layout = layers[name]
            layer = module.get_submodule(name)
            divisor = smoothing.factors(layer.weight, hessian) if smooth else None
            tensors = gptq.calibrated_tensors(layer, spec, hessian, layout, compute_device, divisor)
            rounded[name] = (spec.name, *(None if tensor is None else tensor.to(keep_device) for tensor in tensors))
            del hessian
    return rounded


def mark_calibrated(report, names):
    """The report of a load whose layers `names` came GPTQ-rounded from a cache, marked as quantize_module marks
    them when it rounds them."""
    report.layers = [replace(layer, backend=layer.backend + GPTQ_MARK)
                     if layer.name in names and layer.backend and not layer.backend.endswith(GPTQ_MARK) else layer
                     for layer in report.layers]
    return report


def quantize_calibrated(module, spec, policy, backend, device, round_layers, compute_device=None):
    """quantize_module with GPTQ rounding for the layers gptq_layers names: `round_layers(layers)` returns their
    rounded tensors (round_in_passes with the caller's calibration run); the other layers round to nearest."""
    layers = gptq_layers(module, spec, policy, backend, device)
    if not layers:
        raise ValueError(f"no layer this plan quantizes can take calibrated rounding (GPTQ chooses integer codes; "
                         f"backend {backend!r} stores these layers otherwise, e.g. as FP8 bytes): use 'simulate' or "
                         "'int8', or the plain quantized loader")
    return quantize_module(module, spec, policy, backend, device, compute_device=compute_device,
                           calibrated=round_layers(layers))
