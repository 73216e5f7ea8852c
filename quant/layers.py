"""Layers whose weight is stored packed (int8 codes, or two int4 codes per byte) plus scales (float32 per output
channel, float16 per group: numerics.scale_dtype).

`PackedWeightMixin` is put in front of the layer's own Linear or Conv class (a torch class, or a comfy.ops class
inside ComfyUI, where comfy_adapter/quant_ops.py adds ComfyUI's weight patching protocol on top). The quantized weight
keeps the name `.weight` (so state dicts, LoRA keys and offloading see the layer as usual); `weight_scale` holds
the scales; the original float shape comes from the layer's own attributes (in/out features, kernel size).
A spec with a rank adds the 16-bit low-rank branch (quant/lowrank.py) as buffers `lowrank_down` [r, in columns] and
`lowrank_up` [out, r]; every backend's forward goes through `packed_forward`, which adds the branch to its output.
A smoothed layer (quant/smoothing.py) holds `input_divisor` [in channels] float32: its codes and branch stand for
W diag(s), and `smoothed_forward`, the one entry of every forward (this class's and ComfyUI's, quant_ops.py), divides
the input by s before any backend's quantized path and the branch see it. float32, not 16 bit: x / s must use the
same s that multiplied the weight, or the float product would move by s's rounding (2**-9 in bfloat16) per channel;
it costs 32 bits per input channel (0.01 bits per weight at 3,072 outputs)."""
import torch
from torch import nn

from . import lowrank, numerics, smoothing
from .spec import QuantSpec


def float_weight_shape(layer):
    if isinstance(layer, nn.Linear):
        return (layer.out_features, layer.in_features)
    return (layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)


def integer_layout(layer, spec):
    """(dtype, shape) of the stored weight and the scale shape for `spec`; used to validate caches."""
    shape = float_weight_shape(layer)
    rows, cols = shape[0], int(torch.Size(shape[1:]).numel())
    groups = cols // spec.group_size if spec.group_size else 1
    if spec.packed_int4:
        return torch.uint8, (rows, (cols + 1) // 2), (rows, groups)
    return torch.int8, (rows, cols), (rows, groups)


def lowrank_shapes(layer, spec):
    """(down shape, up shape) of the low-rank branch `spec` asks for, or None without one."""
    if not spec.rank:
        return None
    shape = float_weight_shape(layer)
    return (spec.rank, int(torch.Size(shape[1:]).numel())), (shape[0], spec.rank)


def rank_problem(layer, spec):
    """Why `layer` cannot take `spec`'s branch as given (None if it can): the rank exceeds the weight's smaller side,
    or the layer is a grouped convolution (its weight is block-diagonal, not one [out, in] matrix)."""
    if not spec.rank:
        return None
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution ({layer.groups} groups) has no low-rank branch"
    rows, *rest = float_weight_shape(layer)
    columns = int(torch.Size(rest).numel())
    if spec.rank > min(rows, columns):
        return f"rank {spec.rank} exceeds the {rows} x {columns} weight"
    return None


def input_channels(layer):
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def divisor_problem(layer, divisor):
    """Why `divisor` cannot be `layer`'s smoothing divisor (None if it can): float32 [in channels], finite, > 0."""
    channels = input_channels(layer)
    if divisor.dtype != torch.float32 or tuple(divisor.shape) != (channels,):
        return f"smoothing divisor {divisor.dtype}{tuple(divisor.shape)} does not match float32 ({channels},)"
    if not (torch.isfinite(divisor).all() and (divisor > 0).all()):
        return "smoothing divisor holds values that are not finite and positive"
    return None


def packed_codes(codes, spec):
    """int8 codes as stored for `spec`: two per byte for W2-W4, as they are for W5-W8."""
    return numerics.pack_int4(codes) if spec.packed_int4 else codes


def quantized_tensors(weight, spec, quantize_matrix, compute_device=None, branch_dtype=None):
    """(packed codes, scales[, low-rank down, up]) of a float weight under `spec`, on the weight's device:
    the branch's truncated SVD first when the spec has one, then `quantize_matrix(matrix, spec)` -> (packed, scales)
    of the [out, in columns] matrix (the weight, or its residual beside the branch), computed on `compute_device`.
    branch_dtype: the factors' dtype, None for lowrank.factor_dtype of the weight's."""
    home, weight = weight.device, weight.detach().to(compute_device or weight.device)
    matrix, branch = weight.reshape(weight.shape[0], -1), ()
    if spec.rank:
        down, up, matrix = lowrank.split(matrix, spec.rank, branch_dtype or lowrank.factor_dtype(weight.dtype))
        branch = (down, up)
    return tuple(tensor.to(home) for tensor in (*quantize_matrix(matrix, spec), *branch))


def kept_scales(scale):
    """The scales a layer keeps: per-channel ones in float32 (a float16 one widens exactly); group-wise ones in
    float16 as quantizing makes them, or in float32 as a cache written before float16 group scales holds them (the
    codes were rounded against those: kept as they are, not rounded again)."""
    if not scale.dtype.is_floating_point:
        raise ValueError(f"scales of dtype {scale.dtype}: expected floating-point scales")
    if scale.shape[1] == 1:
        return scale.to(torch.float32)
    if scale.dtype not in (numerics.GROUP_SCALE_DTYPE, torch.float32):
        raise ValueError(f"group scales of dtype {scale.dtype}: expected float16 (or float32 from an older cache)")
    return scale


class PackedWeightMixin:
    quant_spec = None  # QuantSpec once quantized

    def float_weight_shape(self):
        return float_weight_shape(self)

    def _matrix_columns(self):
        return int(torch.Size(self.float_weight_shape()[1:]).numel())

    def packed_layout(self, spec):
        return integer_layout(self, spec)

    def quantize_(self, spec, compute_device=None):
        """compute_device: where to do the arithmetic (a GPU for big CPU-resident models); results stay put."""
        spec = QuantSpec.parse(spec)
        if self.quant_spec is not None:
            raise ValueError(f"layer is already quantized ({self.quant_spec})")
        if not self.weight.dtype.is_floating_point:
            raise ValueError(f"cannot quantize a {self.weight.dtype} weight")
        problem = rank_problem(self, spec)
        if problem:
            raise ValueError(f"{spec}: {problem}")
        self.set_quantized_(spec, *quantized_tensors(self.weight, spec, self.quantize_matrix, compute_device))

    def quantize_matrix(self, matrix, spec):
        """(stored codes, scales) of a 2-D float matrix (the weight, or its residual beside the branch)."""
        codes, scale = numerics.quantize_weight(matrix, spec.w_bits, spec.group_size)
        return packed_codes(codes, spec), scale

    def set_quantized_(self, spec, packed, scale, down=None, up=None, divisor=None):
        """divisor: the smoothing divisor s the codes and branch were made for (they stand for W diag(s))."""
        dtype, shape, scale_shape = self.packed_layout(spec)
        if packed.dtype != dtype or tuple(packed.shape) != shape or tuple(scale.shape) != scale_shape:
            raise ValueError(f"quantized tensors {packed.dtype}{tuple(packed.shape)} / scales {tuple(scale.shape)} "
                             f"do not match {spec} for a weight of shape {self.float_weight_shape()}")
        shapes = lowrank_shapes(self, spec)
        if shapes is None and (down is not None or up is not None):
            raise ValueError(f"low-rank factors given for {spec}, which has no branch")
        if shapes is not None:
            if down is None or up is None:
                raise ValueError(f"{spec} needs its low-rank factors (down {shapes[0]}, up {shapes[1]}); none given")
            if tuple(down.shape) != shapes[0] or tuple(up.shape) != shapes[1] \
                    or down.dtype not in lowrank.FACTOR_DTYPES or up.dtype != down.dtype:
                raise ValueError(f"low-rank factors {down.dtype}{tuple(down.shape)} / {up.dtype}{tuple(up.shape)} do "
                                 f"not match {spec}: 16-bit down {shapes[0]} and up {shapes[1]}")
        if divisor is not None and divisor_problem(self, divisor):
            raise ValueError(divisor_problem(self, divisor))
        self.quant_spec = spec
        self.weight = nn.Parameter(packed, requires_grad=False)
        for name in ("weight_scale", "lowrank_down", "lowrank_up", "input_divisor"):
            self._buffers.pop(name, None)
        self.register_buffer("weight_scale", kept_scales(scale))
        if shapes is not None:
            self.register_buffer("lowrank_down", down)
            self.register_buffer("lowrank_up", up)
        if divisor is not None:
            self.register_buffer("input_divisor", divisor)

    @property
    def smoothing_divisor(self):
        """The smoothing divisor s (float32 [in channels]), None for a layer that is not smoothed."""
        return self._buffers.get("input_divisor")

    def codes(self, packed=None):
        packed = self.weight if packed is None else packed
        if self.quant_spec.packed_int4:
            return numerics.unpack_int4(packed.to(torch.uint8), self._matrix_columns())
        return packed.to(torch.int8)

    def dequantize(self, packed=None, dtype=torch.float32, device=None):
        """Float weight of the original shape from the stored codes (or from `packed`, same layout)."""
        packed = self.weight if packed is None else packed
        device = packed.device if device is None else device
        codes = self.codes(packed.to(device))
        matrix = numerics.dequantize_weight(codes, self.weight_scale.to(device), dtype)
        return matrix.reshape(self.float_weight_shape())

    def branch_weight(self, dtype=torch.float32, device=None):
        """up @ down as a weight of the original shape; None without a branch."""
        if not self.quant_spec.rank:
            return None
        return lowrank.branch_weight(self.lowrank_down, self.lowrank_up, dtype, device).reshape(
            self.float_weight_shape())

    def float_weight(self, packed=None, dtype=torch.float32, device=None):
        """The float weight the layer stands for: the dequantized codes plus the low-rank branch (export, LoRA), of
        a smoothed layer divided by s again (the weight in the input's own units, which LoRA patches are made for)."""
        weight = self.dequantize(packed, dtype, device)
        branch = self.branch_weight(dtype, weight.device)
        weight = weight if branch is None else weight + branch
        divisor = self.smoothing_divisor
        return weight if divisor is None else smoothing.original_weight(weight.float(), divisor).to(dtype)

    def requantize_float(self, weight):
        """Stored-layout codes for a float weight as float_weight gives it (multiplied by s for a smoothed layer,
        the branch taken off)."""
        divisor = self.smoothing_divisor
        if divisor is not None:
            weight = smoothing.smoothed_weight(weight, divisor)
        branch = self.branch_weight(torch.float32, weight.device)
        return self.requantize(weight if branch is None else weight.float() - branch)

    def requantize(self, weight):
        """Stored-layout codes for a float weight on the existing scales (LoRA merges keep scales fixed,
        so that restoring the backed-up codes restores the layer exactly)."""
        rows = weight.shape[0]
        codes = numerics.requantize_weight(weight.reshape(rows, -1), self.weight_scale, self.quant_spec.w_bits)
        return numerics.pack_int4(codes) if self.quant_spec.packed_int4 else codes

    def quantize_input(self, x, channel_dim):
        spec = self.quant_spec
        if spec is None or spec.weight_only:
            return x
        return numerics.fake_quantize_activation(x, spec.a_bits, spec.act_granularity, channel_dim,
                                                  spec.act_group_size)

    def forward(self, x, *args, **kwargs):
        if self.quant_spec is None:
            return super().forward(x, *args, **kwargs)
        bias = None if self.bias is None else self.bias.to(x.device, x.dtype, non_blocking=True)
        return self.smoothed_forward(x, self.weight.to(x.device, non_blocking=True), bias)

    def smoothed_forward(self, x, packed, bias):
        """packed_forward on x / s for a smoothed layer (every backend's path and the branch see the divided input),
        on x otherwise: the one place the divisor is applied."""
        divisor = self.smoothing_divisor
        if divisor is not None:
            x = smoothing.divide_input(x, divisor, smoothing.channel_dim(self))
        return self.packed_forward(x, packed, bias)

    def packed_forward(self, x, packed, bias):
        """The backend's quantized path plus the low-rank branch on the unquantized input."""
        out = self.quantized_forward(x, packed, bias)
        if not self.quant_spec.rank:
            return out
        if isinstance(self, nn.Linear):
            return out.add_(lowrank.branch_output(x, self.lowrank_down, self.lowrank_up))
        return out.add_(lowrank.conv_branch_output(self, x, self.lowrank_down, self.lowrank_up))

    def extra_repr(self):
        base = super().extra_repr()
        return f"{base}, quant={self.quant_spec}" if self.quant_spec else base


def bits_per_weight_of(module, stored=False):
    """Bits per weight over the quantized layers of `module` (codes + scales + low-rank factors over their weights,
    each layer counted with the spec it got: spec.bits_per_weight per layer, weighted by its size, plus a smoothed
    layer's float32 divisor); None if none."""
    from .spec import bits_per_weight
    bits = weights = 0
    for layer in module.modules():
        if isinstance(layer, PackedWeightMixin) and layer.quant_spec is not None:
            rows, *rest = float_weight_shape(layer)
            columns = int(torch.Size(rest).numel())
            bits += bits_per_weight(layer.quant_spec, rows, columns, stored) * rows * columns
            if layer.smoothing_divisor is not None:
                bits += DIVISOR_BITS * layer.smoothing_divisor.numel()
            weights += rows * columns
    return bits / weights if weights else None


class SimulatedLinear(PackedWeightMixin):
    """simulate backend: dequantize the packed weight, fake-quantize the input per token, float matmul."""

    def quantized_forward(self, x, packed, bias):
        weight = self.dequantize(packed, dtype=x.dtype, device=x.device)
        return nn.functional.linear(self.quantize_input(x, -1), weight, bias)


class SimulatedConv(PackedWeightMixin):
    """simulate backend for Conv1d/2d/3d: activations quantized per pixel (over channels) or per tensor."""

    def quantized_forward(self, x, packed, bias):
        weight = self.dequantize(packed, dtype=x.dtype, device=x.device)
        return self._conv_forward(self.quantize_input(x, 1), weight, bias)


DIVISOR_BITS = 32  # a smoothing divisor's entries are float32 (divisor_problem)
_CLASSES = {}


def quantized_class(mixin, layer_class):
    """`mixin` placed in front of the layer's own class, created once per pair."""
    key = (mixin, layer_class)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{mixin.__name__}_{layer_class.__name__}", (mixin, layer_class), {})
    return _CLASSES[key]


QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_quantizable(module):
    return isinstance(module, QUANTIZABLE) or isinstance(module, PackedWeightMixin)
