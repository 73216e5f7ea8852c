"""Pure quantization arithmetic: symmetric integer codes, int4 packing, dynamic activation fake-quant."""
import torch


def qmax(bits):
    return 2 ** (bits - 1) - 1


def _grouped(weight, group_size):
    """A 2-D [out, in] weight as float32 [out, groups, in / groups]: one group per row without a group size."""
    w = weight.detach().float()
    rows, cols = w.shape
    if not group_size:
        return w.reshape(rows, 1, cols)
    if cols % group_size:
        raise ValueError(f"input size {cols} is not a multiple of the group size {group_size}")
    return w.reshape(rows, cols // group_size, group_size)


# Group-wise scales ([out, groups > 1]) are stored in float16, the 16 bits per group that quant/spec.py counts:
# float16 rounds a scale to 2^-11 relative, bfloat16 only to 2^-8. Per-channel scales ([out, 1], a few bytes per
# row) stay float32, which the fp8 / int8 GEMMs take as they are.
GROUP_SCALE_DTYPE = torch.float16


def scale_dtype(groups):
    """The dtype scales are stored in for a weight with `groups` groups per row (1: per channel)."""
    return GROUP_SCALE_DTYPE if groups > 1 else torch.float32


def stored_scales(scale):
    """float32 scales [out, groups] rounded to how they are stored (scale_dtype), in that dtype. Codes are always
    computed against the stored scales, so that dequantizing the stored codes and scales gives what was intended."""
    if scale.shape[-1] == 1:
        return scale.float()
    # Below float16's smallest normal a scale loses mantissa bits and under 2^-24 becomes 0 (codes inf / NaN), above
    # its max inf: clamped to the normal range, a tiny group gets a coarser grid (error <= 2^-15) but finite codes.
    info = torch.finfo(GROUP_SCALE_DTYPE)
    return scale.float().clamp(info.tiny, info.max).to(GROUP_SCALE_DTYPE)


def quantize_weight(weight, bits, group_size=None):
    """Symmetric codes s = amax / qmax per output row (or per group of `group_size` input columns), the scale
    rounded to its stored dtype first. `weight` is 2-D [out, in]; returns (int8 codes [out, in], scales
    [out, 1 or in/group]: float32 per channel, float16 per group)."""
    rows, cols = weight.shape
    w = _grouped(weight, group_size)
    scale = (w.abs().amax(dim=-1) / qmax(bits)).clamp(min=torch.finfo(torch.float32).tiny)
    scale = stored_scales(scale)
    codes = torch.round(w / scale.float().unsqueeze(-1)).clamp(-qmax(bits), qmax(bits)).to(torch.int8)
    return codes.reshape(rows, cols), scale


# Clip ratios tried by mse_scales: the scale s = ratio * amax / qmax that rounds a row (or group) with the least squared
# error. Below about half of amax the clipped outliers cost more than the finer grid saves at any bit width >= 2.
CLIP_RATIOS = tuple(0.5 + 0.5 * i / 39 for i in range(40))


def mse_scales(weight, bits, group_size=None):
    """Scales [out, 1 or in/group] of a 2-D weight as stored (float32 per channel, float16 per group): per row (or
    group), the clip ratio of CLIP_RATIOS whose round-to-nearest codes on the stored scale reproduce the weight with
    the least squared error (ties: the larger ratio). Used where the codes are then chosen by something better than
    rounding each weight on its own (quant/gptq.py)."""
    w = _grouped(weight, group_size)
    amax = w.abs().amax(dim=-1).clamp(min=torch.finfo(torch.float32).tiny)
    best_error = best_scale = None
    for ratio in reversed(CLIP_RATIOS):
        scale = stored_scales((amax * ratio / qmax(bits)).clamp(min=torch.finfo(torch.float32).tiny))
        step = scale.float().unsqueeze(-1)
        error = ((torch.round(w / step).clamp(-qmax(bits), qmax(bits)) * step - w) ** 2).sum(-1)
        if best_error is None:
            best_error, best_scale = error, scale
        else:
            better = error < best_error
            best_error, best_scale = torch.where(better, error, best_error), torch.where(better, scale, best_scale)
    return best_scale


def requantize_weight(weight, scale, bits):
    """Codes of `weight` on an existing grid (used to merge LoRA deltas without moving the scales); `scale` as stored
    (float32 or float16, widened exactly to float32)."""
    w = weight.detach().float()
    rows, cols = w.shape
    grouped = w.reshape(rows, scale.shape[1], -1)
    codes = torch.round(grouped / scale.to(w.device, torch.float32).unsqueeze(-1)).clamp(-qmax(bits), qmax(bits))
    return codes.to(torch.int8).reshape(rows, cols)


def dequantize_weight(codes, scale, dtype=torch.float32):
    """codes * scale in `dtype`, the scale (float32 or float16 as stored) first converted to `dtype`: exact in
    float32; in a 16-bit dtype the scale is rounded to it and the product once more (as the Triton dequantize does)."""
    rows, cols = codes.shape
    grouped = codes.to(dtype).reshape(rows, scale.shape[1], -1) * scale.to(codes.device, dtype).unsqueeze(-1)
    return grouped.reshape(rows, cols)


def pack_int4(codes):
    """Two signed 4-bit codes per byte along the last dim (an odd last dim is zero-padded)."""
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed, columns):
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], -1)[..., :columns]


def fake_quantize_activation(x, bits, granularity="token", channel_dim=-1, group_size=None):
    """Dynamic symmetric quantize-dequantize: one scale per token (per pixel for convs: the channel
    dim is reduced), one per group of `group_size` consecutive channels of each token ("group"; a last, shorter
    group when the channels do not divide), or one per tensor. Computed in float32, returned in x's dtype."""
    xf = x.float()
    if granularity == "group":  # each group is a token of its own
        channels = xf.shape[channel_dim]
        padded = torch.nn.functional.pad(xf.movedim(channel_dim, -1), (0, -channels % group_size))  # zeros: max kept
        groups = fake_quantize_activation(padded.unflatten(-1, (-1, group_size)), bits, "token", -1)
        return groups.flatten(-2)[..., :channels].movedim(-1, channel_dim).to(x.dtype)
    if granularity == "token":
        amax = xf.abs().amax(dim=channel_dim, keepdim=True)
    else:
        amax = xf.abs().amax()
    scale = amax.clamp(min=1e-12) / qmax(bits)
    return (torch.round(xf / scale).clamp(-qmax(bits), qmax(bits)) * scale).to(x.dtype)
