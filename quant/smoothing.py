"""SmoothQuant's migration (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models", eq. 4) for calibrated loads: a layer's input channel j is divided by s_j and its weight's
column j multiplied by s_j, so the float product is unchanged, while 4-bit activations lose less to their outliers
(their range moves into the weight, whose columns GPTQ rounds against the smoothed inputs' moments).
    s_j = rms_j ** ALPHA / max |W_:,j| ** (1 - ALPHA)
rms_j (standing in for the paper's max |X_j|) comes from the diagonal of the layer's input moments H = E[x xᵀ] that
calibrated rounding collects anyway (a convolution: the mean over its kernel's columns of channel j). The quantized
layer keeps s as its `input_divisor` (quant/layers.py); GPTQ rounds W diag(s) against D⁻¹ H D⁻¹ (D = diag(s)).
Measured on the digits testbed only (RESULTS.md, "SmoothQuant's migration"): it helps W4A4; at A8 nothing was
measured, so "auto" leaves it off there. testbed/digits/quantizer_experiment.py's smooth() uses these functions."""

from torch import nn

ALPHA = 0.5  # the paper's default migration strength, the one measured on the testbed
MODES = ("auto", "on", "off")
DEFAULT_MODE = "auto"
NAME = f"SmoothQuant alpha {ALPHA:g}"  # what a smoothed load records (cache key, presets: quantizer.smoothing)
MODE_HELP = ("SmoothQuant-style smoothing of the GPTQ-rounded layers (input channels divided by per-channel factors, "
             "weight columns multiplied by them; same float product). auto: on for 4-bit activations (A4 specs), "
             "where the digits testbed measured it to help W4A4, off otherwise (at A8 it was not measured to help).")
# Floors (those the testbed was measured with) of the moments' diagonal (an unseen channel), of a zero weight
# column's maximum and of the factor.
_MOMENT_FLOOR, _WEIGHT_FLOOR, _FACTOR_FLOOR = 1e-12, 1e-8, 1e-5


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"smoothing must be one of {', '.join(MODES)}, got {mode!r}")


def resolve(mode, spec):
    """Whether a calibrated load of `spec` (a QuantSpec) smooths its GPTQ-rounded layers under `mode`."""
    check_mode(mode)
    return mode == "on" or mode == "auto" and not spec.weight_only and spec.a_bits <= 4


def factors(weight, hessian, alpha=ALPHA):
    """s [in channels] float32 of a Linear [out, in] or Conv [out, in, *kernel] weight with input moments `hessian`
    [in * kernel, in * kernel] (the rows its weight matrix multiplies: quant.gptq.layer_input_rows)."""
    weight, hessian = weight.detach().float(), hessian.detach().float().to(weight.device)
    channels = weight.shape[1]
    per_column = hessian.diagonal().clamp(min=_MOMENT_FLOOR).sqrt().view(channels, -1)   # conv: [in, kh * kw]
    rms = per_column.square().mean(1).sqrt()
    weight_max = weight.abs().transpose(0, 1).reshape(channels, -1).amax(1).clamp(min=_WEIGHT_FLOOR)
    return (rms ** alpha / weight_max ** (1 - alpha)).clamp(min=_FACTOR_FLOOR)


def smoothed_weight(weight, divisor):
    """W diag(s) in float32, the weight's shape (s multiplies the columns of input channel j)."""
    weight = weight.detach().float()
    return weight * divisor.to(weight.device).view(1, -1, *([1] * (weight.dim() - 2)))


def original_weight(weight, divisor):
    """W from W diag(s): what LoRA patches and exports see (the weight in the input's own units)."""
    return weight / divisor.to(weight.device, weight.dtype).view(1, -1, *([1] * (weight.dim() - 2)))


def smoothed_moments(hessian, divisor):
    """D⁻¹ H D⁻¹: the moments of the smoothed inputs (each channel's factor over its kernel's columns)."""
    columns = divisor.to(hessian.device, hessian.dtype).repeat_interleave(hessian.shape[0] // divisor.numel())
    return hessian / columns[:, None] / columns[None, :]


def channel_dim(layer):
    """The dimension of a Linear's (last) or a convolution's (1) input that holds its channels."""
    return -1 if isinstance(layer, nn.Linear) else 1


def divide_input(x, divisor, channel_dim):
    """x / s over `channel_dim`, computed in float32 and rounded once to x's dtype (s is not rounded to 16 bit, so
    the quantized path and the branch see exactly x / s up to that one rounding)."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return (x.float() / divisor.to(x.device).view(shape)).to(x.dtype)
