"""quantize_module: quantize the Linear/Conv layers of any nn.Module in place, per a layer policy."""
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from . import gptq
from .registry import get_backend
from .layers import (bits_per_weight_of, divisor_problem, float_weight_shape, kept_scales, lowrank_shapes,
                     rank_problem)
from .lowrank import FACTOR_DTYPES
from .policy import DEFAULT_POLICY, LayerDecision, LayerPolicy
from .spec import QuantSpec


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str
    spec: str | None  # None: kept in high precision
    backend: str | None
    reason: str


@dataclass
class QuantReport:
    spec: str
    backend: str
    bytes_before: int
    bytes_after: int = 0
    layers: list = field(default_factory=list)
    bits_per_weight: float | None = None  # nominal, over the quantized layers (quant.spec.bits_per_weight)

    @property
    def quantized(self):
        return sum(layer.spec is not None for layer in self.layers)

    @property
    def kept(self):
        return sum(layer.spec is None for layer in self.layers)

    @property
    def ratio(self):
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    def by_backend(self):
        return Counter(layer.backend for layer in self.layers if layer.backend)

    def summary(self):
        how = ", ".join(f"{count} {name}" for name, count in sorted(self.by_backend().items()))
        kept = Counter(layer.reason for layer in self.layers if layer.spec is None)
        kept_text = ", ".join(f"{count} {reason}" for reason, count in sorted(kept.items())) or "none"
        return (f"{self.spec} via {self.backend}: {self.quantized} layers quantized ({how or 'none'}), "
                f"{self.kept} kept in high precision ({kept_text}); "
                f"{self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB ({self.ratio:.3f}x)"
                + (f", {self.bits_per_weight:.2f} bits per quantized weight" if self.bits_per_weight else ""))

    def to_dict(self):
        return {"spec": self.spec, "backend": self.backend, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "quantized": self.quantized, "kept": self.kept,
                "bits_per_weight": self.bits_per_weight,
                "layers": [layer.__dict__ for layer in self.layers]}


def tensor_bytes(tensor):
    """Real storage of a tensor, also of tensor subclasses that hold their data in inner tensors."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    extra = sum(tensor_bytes(getattr(tensor, name)) for name in ("SCB", "quant_state_absmax")
                if isinstance(getattr(tensor, name, None), torch.Tensor))
    return tensor.numel() * tensor.element_size() + extra


def module_bytes(module):
    seen, total = set(), 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def _kind(layer):
    torch_class = next((base for base in type(layer).__mro__ if base.__module__.startswith("torch.nn")), type(layer))
    return torch_class.__name__


def _fit_layer(module, decision):
    """Per-group weights need the group size to divide the layer's input columns, else they go per channel; the rank
    is a cap: a weight with a smaller side takes that rank, a grouped convolution no branch. Each change is reported."""
    spec, reason = decision.spec, decision.reason
    if spec is None:
        return decision
    layer = module.get_submodule(decision.name)
    rows, *rest = float_weight_shape(layer)
    columns = int(torch.Size(rest).numel())
    if spec.group_size and columns % spec.group_size:
        spec = replace(spec, weight_granularity="channel", group_size=None)
        reason += f"; {columns} columns not divisible by group {decision.spec.group_size}: per channel"
    if rank_problem(layer, spec):
        rank = min(spec.rank, rows, columns) if getattr(layer, "groups", 1) == 1 else None
        reason += f"; {rank_problem(layer, spec)}: " + (f"rank {rank}" if rank else "no low-rank branch")
        spec = spec.with_rank(rank)
    return decision if spec == decision.spec else LayerDecision(decision.name, spec, reason)


def _check_stored(module, decisions, quantizer, stored):
    """Stored tensors (from a cache) must cover exactly the planned layers, each with its spec and layout."""
    planned = {d.name for d in decisions if d.spec is not None}
    if set(stored) != planned:
        missing, extra = sorted(planned - set(stored)), sorted(set(stored) - planned)
        raise ValueError(f"stored layers do not match the plan (missing {missing[:3]}, unexpected {extra[:3]})")
    for decision in decisions:
        if decision.spec is None:
            continue
        layer = module.get_submodule(decision.name)
        spec = quantizer.effective_spec(layer, decision.spec)
        stored_spec, packed, scale, *rest = stored[decision.name]
        dtype, shape, scale_shape = quantizer.layout(layer, spec)
        if stored_spec != spec.name or packed.dtype != dtype or tuple(packed.shape) != shape:
            raise ValueError(f"layer {decision.name!r}: stored {stored_spec} {packed.dtype}{tuple(packed.shape)} "
                             f"does not match {spec.name} {dtype}{shape}")
        if tuple(scale.shape) != scale_shape:
            raise ValueError(f"layer {decision.name!r}: stored scales of shape {tuple(scale.shape)} do not match "
                             f"the {spec.name} scales' shape {scale_shape}")
        try:
            kept_scales(scale)
        except ValueError as error:
            raise ValueError(f"layer {decision.name!r}: stored {error}") from None
        _check_branch(decision.name, layer, spec, [t for t in rest[:2] if t is not None])
        divisor = rest[2] if len(rest) > 2 else None
        if divisor is not None and divisor_problem(layer, divisor):
            raise ValueError(f"layer {decision.name!r}: stored {divisor_problem(layer, divisor)}")


def _check_branch(name, layer, spec, branch):
    shapes = lowrank_shapes(layer, spec)
    if shapes is None:
        if branch:
            raise ValueError(f"layer {name!r}: stored low-rank factors, but {spec.name} has no branch")
        return
    if len(branch) != 2:
        raise ValueError(f"layer {name!r}: {spec.name} needs its low-rank factors, which were not stored "
                         "(a cache written before the branch existed)")
    down, up = branch
    if tuple(down.shape) != shapes[0] or tuple(up.shape) != shapes[1] or down.dtype not in FACTOR_DTYPES \
            or up.dtype != down.dtype:
        raise ValueError(f"layer {name!r}: stored low-rank factors {down.dtype}{tuple(down.shape)} / "
                         f"{up.dtype}{tuple(up.shape)} do not match {spec.name}: 16-bit {shapes[0]} / {shapes[1]}")


GPTQ_MARK = ", GPTQ rounding"  # ends the backend text of a layer whose codes GPTQ rounded


def layer_plan(module, spec, policy=None, backend="simulate", device=None):
    """(backend, decisions): what quantize_module does to each quantizable layer of `module`, each spec fitted to
    its layer (group size, rank) and checked against the backend on `device`."""
    spec = QuantSpec.parse(spec)
    if policy is None:
        policy = DEFAULT_POLICY
    elif isinstance(policy, str):
        policy = LayerPolicy.parse(policy)
    quantizer = get_backend(backend)
    quantizer.check(spec, device)
    decisions = [_fit_layer(module, decision) for decision in policy.plan(module, spec)]
    for decision in decisions:
        if decision.spec is not None and decision.spec != spec and not decision.spec.weight_only:
            quantizer.check(decision.spec, device)
    return quantizer, decisions


def quantize_module(module, spec, policy=None, backend="simulate", device=None, stored=None, compute_device=None,
                    hessians=None, calibrated=None):
    """Quantize `module`'s Linear/Conv layers in place; returns a QuantReport.
    policy: a LayerPolicy, a policy text ('pattern=keep, ...'), or None for the defaults.
    device: where the fp8 backend will run (checked up front); None skips that check.
    stored: {layer name: (spec name, packed weight, scales[, low-rank down, up[, smoothing divisor]])} already
    quantized (a cache; None for a part the layer has not),
    used instead of quantizing; checked against the plan before any layer changes.
    compute_device: where the weights are quantized (e.g. the GPU for a model resident on the CPU).
    hessians: {layer name: E[x xᵀ] of its input on calibration samples} (quant.gptq.InputMoments): those layers'
    codes are rounded by GPTQ (quant/gptq.py) instead of to nearest; the others round to nearest.
    calibrated: {layer name: (spec name, packed weight, scales[, down, up])} that GPTQ already rounded (moments
    collected in passes, quant/calibrated.py): used for those layers and reported as GPTQ rounding, checked like
    `stored`; the others round to nearest."""
    spec = QuantSpec.parse(spec)
    quantizer, decisions = layer_plan(module, spec, policy, backend, device)
    if stored is not None and (hessians or calibrated):
        raise ValueError("stored (cached) tensors and calibration moments for GPTQ exclude each other: stored "
                         "tensors are already rounded")
    if hessians and calibrated:
        raise ValueError("give either calibration moments or codes GPTQ already rounded, not both")
    rounded = hessians or calibrated or {}
    if rounded:
        unknown = sorted(set(rounded) - {d.name for d in decisions if d.spec is not None})
        if unknown:
            what = "calibration moments" if hessians else "GPTQ-rounded codes"
            raise ValueError(f"{what} for layers the plan does not quantize: {unknown[:3]}")
        if not getattr(quantizer, "cacheable", False):
            raise ValueError(f"backend {quantizer.name!r} quantizes in its own library and cannot take calibrated "
                             "rounding (GPTQ); use 'simulate', 'int8' or 'auto'")
    if stored is not None:
        if not getattr(quantizer, "cacheable", False):
            raise ValueError(f"backend {quantizer.name!r} cannot take stored quantized weights")
        _check_stored(module, decisions, quantizer, stored)
    if calibrated:
        _check_stored(module, [d for d in decisions if d.name in calibrated], quantizer, calibrated)
    report = QuantReport(spec.name, quantizer.name, module_bytes(module))
    for decision in decisions:
        layer = module.get_submodule(decision.name)
        kind = _kind(layer)
        if decision.spec is None:
            report.layers.append(LayerReport(decision.name, kind, None, None, decision.reason))
            continue
        try:
            tensors = None if stored is None else stored[decision.name][1:]
            if calibrated and decision.name in calibrated:
                tensors = calibrated[decision.name][1:]
            if hessians and decision.name in hessians:
                spec_here = quantizer.effective_spec(layer, decision.spec)
                tensors = gptq.calibrated_tensors(layer, spec_here, hessians[decision.name],
                                                  quantizer.layout(layer, spec_here), compute_device)
            new_layer, how = quantizer.quantize(layer, decision.spec, tensors, compute_device)
            if decision.name in rounded:
                how += GPTQ_MARK
        except (ValueError, RuntimeError) as error:
            raise type(error)(f"layer {decision.name!r}: {error}") from error
        if new_layer is not layer:
            parent_name, _, child = decision.name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, new_layer)
        report.layers.append(LayerReport(decision.name, kind, decision.spec.name, how, decision.reason))
    report.bytes_after = module_bytes(module)
    report.bits_per_weight = bits_per_weight_of(module)
    return report
