"""Calibrated rounding: GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1) on the pack's integer codes.

Round-to-nearest rounds every weight on its own. GPTQ rounds the columns of a layer's [out, in] weight one by one
and moves each column's rounding error onto the columns not yet rounded, weighted by the inverse of the layer's input
second moment H = E[x xᵀ] (x: the layer's input on calibration samples, one row per token or conv patch), so
that the layer's output on such inputs (not its weights) stays close to the float layer's:
    argmin_Q  E ||(W - Q) x||²  =  argmin_Q  tr((W - Q) H (W - Q)ᵀ)
The scales are fixed before the rounding (`numerics.mse_scales`, per row or per group), so the result is stored,
cached and run exactly like `numerics.quantize_weight`'s codes. The low-rank branch's residual is rounded the same
way (its input is the layer's input too). Only the rounding changes; the format, kernels and bits per weight do not.
"""
import torch
import torch.nn.functional as F

from . import lowrank, numerics, smoothing
from .layers import packed_codes, quantized_tensors

# Added to H's diagonal, as a fraction of its mean: keeps the Cholesky factorisation defined for inputs that do
# not span every direction (Frantar et al. use 1%).
DAMPING = 0.01
# Least calibration rows (tokens, or conv pixels) per input column for GPTQ to round a layer; below it the layer rounds
# to nearest. With fewer rows E[x xᵀ] misses directions that other inputs take, and GPTQ's error moves onto them.
# Measured on full-rank correlated inputs (128 x 2048-4096 weights, W4-g64, held-out inputs, 2026-12-07): relative
# output error 0.089 / 0.094 / 0.107 / 0.139 with GPTQ at 2 / 1.5 / 1 / 0.33 rows per column, 0.099 to nearest; an
# H100 at 4096 rows for 12288 columns gave the same 0.139.
MIN_ROWS_PER_COLUMN = 2.0
# Columns rounded between two updates of the rest of the weight (the paper's lazy batch updates, section 3 step 2):
# same result as one column at a time, fewer large matrix products.
BLOCK = 128
# Stored code dtypes GPTQ can choose: int8 codes, or int4 codes two per byte (not e4m3 bytes).
INTEGER_CODES = (torch.int8, torch.uint8)


class InputMoments:
    """E[x xᵀ] of the input of each named Linear / Conv2d layer of a module, accumulated by forward hooks while a
    calibration run goes through the module: `with InputMoments(module, names) as moments: run(); moments.hessians`.
    A convolution's input is taken as its patches (F.unfold with the layer's kernel, stride, padding and dilation,
    [in * kh * kw] per output pixel), which is what its [out, in * kh * kw] weight multiplies."""

    def __init__(self, module, names):
        self.module, self.names = module, list(names)
        self.sums, self.counts, self._hooks = {}, {}, []

    def __enter__(self):
        for name in self.names:
            layer = self.module.get_submodule(name)
            if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                raise TypeError(f"layer {name!r} is a {type(layer).__name__}; input moments are taken of Linear "
                                "and Conv2d layers")
            if isinstance(layer, torch.nn.Conv2d) and layer.groups != 1:
                raise ValueError(f"layer {name!r} is a grouped convolution (groups={layer.groups}); its input "
                                 "moments would not match its weight's columns")
            self._hooks.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        return False

    def _hook(self, name):
        def hook(layer, inputs, output):
            rows = layer_input_rows(layer, inputs[0])
            rows = rows.to(accumulator_dtype(rows.device))
            self.sums[name] = self.sums.get(name, 0) + rows.T @ rows
            self.counts[name] = self.counts.get(name, 0) + rows.shape[0]
        return hook

    def pop_hessian(self, name):
        """E[x xᵀ] of one layer, float32, its accumulator freed (None if the run never went through it)."""
        total, count = self.sums.pop(name, None), self.counts.pop(name, 0)
        return None if total is None else (total / count).float()

    @property
    def hessians(self):
        """{layer name: E[x xᵀ], [in_columns, in_columns] float32} of the layers the run went through."""
        return {name: (total / self.counts[name]).float() for name, total in self.sums.items()}


def enough_rows(rows, columns):
    """Whether `rows` calibration rows are enough for GPTQ on a layer with `columns` input columns."""
    return rows >= MIN_ROWS_PER_COLUMN * columns


def moment_columns(layer):
    """Side of a Linear / Conv2d layer's E[x xᵀ]: its weight's input columns (in, or in * kh * kw)."""
    return int(layer.weight[0].numel())


def accumulator_dtype(device):
    """What InputMoments sums x xᵀ in on `device`: float64 on the CPU, float32 on accelerators (where float64 is slow
    on most of them)."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def accumulator_bytes(columns, device):
    """Memory of one layer's InputMoments accumulator on `device`."""
    return columns * columns * accumulator_dtype(device).itemsize


def plan_passes(sizes, budget_bytes):
    """Split layers into calibration passes whose accumulators fit `budget_bytes` together: sizes is
    [(layer name, accumulator bytes)] in the order the layers run; each pass takes the next layers while they fit.
    A layer that alone exceeds the budget is an error naming it (its moments cannot be taken within the budget)."""
    if not budget_bytes > 0:
        raise ValueError(f"the moments budget must be positive, got {budget_bytes!r} bytes")
    passes, current, used = [], [], 0
    for name, size in sizes:
        if size > budget_bytes:
            raise ValueError(f"layer {name!r} alone needs {size / 2**30:.3g} GiB for its input moments, over the "
                             f"budget of {budget_bytes / 2**30:.3g} GiB: raise the budget")
        if current and used + size > budget_bytes:
            passes.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return passes + ([current] if current else [])


def layer_input_rows(layer, x):
    """The input as the rows its weight matrix multiplies: [tokens, in] for a Linear, [pixels, in * kh * kw] for a
    Conv2d."""
    x = x.detach()
    if isinstance(layer, torch.nn.Conv2d):
        patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def gptq_quantize_weight(weight, hessian, bits, group_size=None, damping=DAMPING, block=BLOCK):
    """(int8 codes [out, in], scales [out, 1 or in / group] as stored: float32 per channel, float16 per group) of a
    2-D weight, in numerics.quantize_weight's format, rounded by GPTQ against the input second moment `hessian`
    [in, in]. Columns the calibration never saw (zero on H's diagonal) keep round-to-nearest codes and take no error
    from the others."""
    if weight.dim() != 2:
        raise ValueError(f"GPTQ takes a 2-D weight, got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    if tuple(hessian.shape) != (columns, columns):
        raise ValueError(f"input moments of shape {tuple(hessian.shape)} do not match a weight with {columns} "
                         f"input columns")
    if not torch.isfinite(hessian).all():
        raise ValueError("the input moments are not finite (a calibration input held inf or NaN)")
    work = torch.float64   # in float32 an H100 gave 2% other codes than float64 at 12288 columns; float64 took 1.5 s
    scale = numerics.mse_scales(weight, bits, group_size)                  # [rows, groups], fixed from here on
    column_scale = scale.to(work).repeat_interleave(columns // scale.shape[1], dim=1)
    w = weight.detach().to(work).clone()
    h = hessian.detach().to(w.device, work).clone()
    unseen = torch.diagonal(h) <= 0
    h[unseen, unseen] = 1
    h += damping * torch.diagonal(h).mean() * torch.eye(columns, dtype=work, device=w.device)
    # The upper Cholesky factor of H⁻¹: row j holds the weights that spread column j's error over columns > j.
    spread = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    spread[unseen] = 0
    spread[unseen, unseen] = 1
    limit = numerics.qmax(bits)
    codes = torch.empty_like(w)
    for start in range(0, columns, block):
        end = min(start + block, columns)
        errors = torch.empty(rows, end - start, dtype=work, device=w.device)
        for j in range(start, end):
            codes[:, j] = torch.round(w[:, j] / column_scale[:, j]).clamp(-limit, limit)
            error = (w[:, j] - codes[:, j] * column_scale[:, j]) / spread[j, j]
            w[:, j + 1:end] -= error[:, None] * spread[j, j + 1:end][None, :]
            errors[:, j - start] = error
        w[:, end:] -= errors @ spread[start:end, end:]
    return codes.to(torch.int8), scale


def calibrated_tensors(layer, spec, hessian, layout, compute_device=None, divisor=None):
    """(packed codes, scales[, down, up]) of a float Linear / Conv2d layer under `spec` with GPTQ's rounding: what
    quantize_module installs in place of round-to-nearest codes (the same layout, checked by the layer).
    layout: the backend's (dtype, shape, scale shape) for the layer; GPTQ chooses integer codes, so a backend that
    stores other codes (fp8's e4m3 bytes) cannot take it.
    divisor: SmoothQuant's factors s (quant/smoothing.py): W diag(s) is rounded against D⁻¹ H D⁻¹, and the result
    is (packed, scales, down or None, up or None, s), in set_quantized_'s order."""
    if layout[0] not in INTEGER_CODES:
        raise ValueError(f"calibrated rounding (GPTQ) chooses integer codes; this backend stores {spec} as "
                         f"{layout[0]} (use backend 'simulate', 'int8' or 'auto' for calibrated rounding)")

    def quantize_matrix(matrix, spec):
        codes, scale = gptq_quantize_weight(matrix, hessian.to(matrix.device), spec.w_bits, spec.group_size)
        return packed_codes(codes, spec), scale

    if divisor is None:
        return quantized_tensors(layer.weight, spec, quantize_matrix, compute_device)
    hessian = smoothing.smoothed_moments(hessian.float(), divisor.to(hessian.device))
    tensors = quantized_tensors(smoothing.smoothed_weight(layer.weight, divisor), spec, quantize_matrix,
                                compute_device, lowrank.factor_dtype(layer.weight.dtype))
    return (*tensors, *((None, None) if len(tensors) == 2 else ()), divisor)
