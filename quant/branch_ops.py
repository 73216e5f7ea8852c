"""The 16-bit low-rank branch beside an 8-bit GEMM, without the extra passes over x and y that cost it +30-67% per
layer when run as two more GEMMs (issue 22, H100). Output = Q(x) Q(W - up down)^T + (x down^T) up^T.

fused  the down-projection rides in the activation-quantization kernel (x is read once: codes, scales and
       x down^T in one launch); the up-projection is one cuBLAS addmm into the GEMM's output (beta = 1: one pass
       over y, the sum rounded once).
fold   widened K: [x, x down^T] [W, up]^T in ONE FP8 GEMM. The branch columns are quantized with the row's own
       scale (A side) and the weight's per-channel scale (B side); a free per-component factor c_j moves magnitude
       between the two sides (down_j c_j, up_j / c_j) so that the B side's largest code is FOLD_B_MAX (448: any
       less and the A side saturates). FP8 keeps the branch to e4m3's relative precision, about 5-7% of the branch
       (two 3-bit mantissas), not 16 bits. On a CPU test layer (512 -> 384, decaying spectrum, outlier channels,
       rank 32) that holds for W4A8 (error vs the float product 0.090 folded, 0.085 fused: the 4-bit residual
       dominates) and not for W8A8 (0.055 folded, 0.021 fused, 0.033 without a branch): `fold_holds`.
epilogue  x down^T as one cuBLAS GEMM (16-bit, as the unfused form), the up-projection in the Triton GEMM's epilogue
       (quant/kernels/gemm_kernels.py): added to the float32 result before its one rounding, no extra pass over y.
addmm  x down^T as one cuBLAS GEMM, then y += (x down^T) up^T in place, y being the GEMM's C: cuBLAS reads and
       writes y once. The layers' shared unfused forward writes the product and adds it in another kernel (two
       more passes over y and one more launch). This is what bench/kernels8.py and bench/gpu_gemm.py time as
       "unfused"; it rounds the sum once where the shared forward rounds the product and then the sum.
Every function has a torch definition that runs anywhere (the CPU tests) beside the Triton one."""
import torch

from . import fp8_codes as fp8, int8_codes as int8, kernels, linear_ops

FOLD_B_MAX = 448.0
# The eager form a quantized layer's branch takes on CUDA. Measured on an H100 (2026-12-07, bench/kernels8.py and
# bench/gpu_gemm.py, full FLUX's linears per step, rank 32): on the cuBLAS paths addmm (the benchmarks' "unfused")
# +17.9 to +24.3 ms, fused +31.2 / +32.7, fold +25.7 (and its FP8 branch is 2.6% of the branch off the 16-bit
# reference); on the Triton int8 GEMM (W8 codes) addmm +25.4, the up-projection in its epilogue +11.9. "auto": the
# epilogue where the layer runs the Triton int8 GEMM (linear_ops.int8_runs_triton), else addmm on CUDA; "unfused"
# off CUDA (the CPU's numbers stay the shared forward's). The other forms stay selectable for measurements.
EAGER_FORM = "auto"
EAGER_FORMS = ("auto", "unfused", "addmm", "fused", "fold", "epilogue")


def fold_holds(spec):
    """The fold's FP8 branch is below the quantization error only beside 4-bit weights (see above)."""
    return spec.w_bits <= 4 and spec.a_bits == 8


def fold_factors(down, up, weight_scale, b_max=FOLD_B_MAX):
    """(down' [r, K] in down's dtype, up codes [N, r] e4m3): down'_j = c_j down_j and up codes = up_nj / (c_j s_n),
    c_j = max_n |up_nj / s_n| / b_max, so that sum_j (x down'_j)(codes_nj) s_n = (x down^T up^T)_n."""
    per_channel = up.float() / weight_scale.float().view(-1, 1)
    c = (per_channel.abs().amax(dim=0) / b_max).clamp(min=torch.finfo(torch.float32).tiny)
    down_folded = (down.float() * c[:, None]).to(down.dtype)
    codes = (per_channel / c).clamp(-fp8.E4M3_MAX, fp8.E4M3_MAX).to(fp8.E4M3)
    return down_folded, codes


def fp8_fold_reference(x, weight_codes, weight_scale, bias, down_folded, up_codes):
    """Torch definition of the fold: A = [codes(x), e4m3(x down'^T * (1 / s_x))], B = [W codes, up codes]."""
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    padded = -(-count // 16) * 16
    codes, scale = fp8.quantize_rows(rows, padded)
    xd = torch.nn.functional.pad(rows.float() @ down_folded.float().t(), (0, 0, 0, padded - count))
    branch = (xd * (1.0 / scale)).clamp(-fp8.E4M3_MAX, fp8.E4M3_MAX).to(fp8.E4M3)
    a = torch.cat([codes, branch], dim=1)
    b = torch.cat([weight_codes, up_codes], dim=1)
    out = torch._scaled_mm(a, b.t(), scale_a=scale, scale_b=weight_scale.view(1, -1), bias=bias, out_dtype=x.dtype,
                           use_fast_accum=fp8.FAST_ACCUMULATION and x.is_cuda)
    return out[:count].view(*x.shape[:-1], weight_codes.shape[0])


def wide_fp8_weight(packed, int4, up_codes, rows, cols):
    """[rows, cols + r] e4m3: the layer's weight codes (e4m3, or int4 unpacked) with the up codes after them."""
    tk = kernels.triton_kernels
    wide = torch.empty((rows, cols + up_codes.shape[1]), device=packed.device, dtype=fp8.E4M3)
    wide[:, cols:].copy_(up_codes)
    if int4:
        tk.int4_unpack(packed, rows, cols, fp8.E4M3, out=wide)
    else:
        wide[:, :cols].copy_(packed)
    return wide


def fold_fast(x, wide, weight_scale, bias, down_folded):
    """The fold on CUDA: one quantization launch (x and its branch columns), one FP8 GEMM on the wide weight."""
    tk = kernels.triton_kernels
    rows = x.reshape(-1, x.shape[-1])
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    count = rows.shape[0]
    codes, scale, _ = tk.quantize_act(rows, -(-count // 16) * 16, False, down=down_folded, fold=True)
    out = torch._scaled_mm(codes, wide.t(), scale_a=scale, scale_b=weight_scale.view(1, -1), bias=bias,
                           out_dtype=x.dtype, use_fast_accum=fp8.FAST_ACCUMULATION)
    return out[:count].view(*x.shape[:-1], wide.shape[0])


def fused_fast(x, packed, weight_scale, bias, out_features, int4, down, up, int8_codes):
    """Down-projection inside the quantization kernel, up-projection as one addmm into the GEMM's output."""
    tk = kernels.triton_kernels
    rows = x.reshape(-1, x.shape[-1])
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    count, cols = rows.shape
    if int8_codes:
        codes, scale, xd = tk.quantize_act(rows, int8.padded_rows(count, "cuda"), True, down=down)
        weight = tk.int4_unpack(packed, out_features, cols, torch.int8) if int4 else packed
        out = tk.int8_epilogue(torch._int_mm(codes, weight.t()), scale, weight_scale, bias, count, x.dtype)
    else:
        codes, scale, xd = tk.quantize_act(rows, -(-count // 16) * 16, False, down=down)
        weight = tk.int4_unpack(packed, out_features, cols, fp8.E4M3) if int4 else packed
        out = torch._scaled_mm(codes, weight.t(), scale_a=scale, scale_b=weight_scale.view(1, -1), bias=bias,
                               out_dtype=x.dtype, use_fast_accum=fp8.FAST_ACCUMULATION)[:count]
    out.addmm_(xd, up.t())
    return out.view(*x.shape[:-1], out_features)


def fused_reference(x, packed, weight_scale, bias, out_features, int4, down, up, int8_codes):
    """Torch definition of `fused_fast` (up to where it rounds): the 8-bit linear plus the branch, x down^T rounded
    to x's dtype, the rest in float32, rounded once."""
    linear = linear_ops.int8_reference if int8_codes else linear_ops.fp8_reference
    out = linear(x, packed, weight_scale, None, out_features, int4).float()
    xd = torch.nn.functional.linear(x, down.to(x.dtype))
    out = out + xd.float() @ up.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def _prepared(layer, x, fold):
    """(down, up or up codes) for the fast forms in x's dtype, converted / folded once per set of buffers (a LoRA
    leaves them alone; moving the layer makes new buffers, which are prepared again)."""
    sources = (layer.lowrank_down, layer.lowrank_up, layer.weight_scale)
    cached = layer.__dict__.get("_branch_prepared")
    if cached is not None and all(a is b for a, b in zip(cached[0], sources)) and cached[1] == (x.dtype, fold):
        return cached[2]
    down, up = layer.lowrank_down.to(x.dtype), layer.lowrank_up.to(x.dtype)
    prepared = fold_factors(down, up, layer.weight_scale) if fold else (down, up)
    layer.__dict__["_branch_prepared"] = (sources, (x.dtype, fold), prepared)
    return prepared


def addmm_forward(layer, x, packed, bias, down, up):
    """The layer's 8-bit output with the branch added into it by one in-place addmm (form "addmm"); down [r, in] and
    up [out, r] in x's dtype on x's device. The GEMM's output is a fresh contiguous tensor, so `view` (never a copy)
    writes into what is returned."""
    out = layer.quantized_forward(x, packed, bias)
    out.view(-1, up.shape[0]).addmm_(torch.nn.functional.linear(x, down).view(-1, up.shape[1]), up.t())
    return out


def traced_branch_forward(layer, x, packed, bias):
    """Under torch.compile: the layer's 8-bit path (traced torch) and the branch's up-projection as one addmm into
    its output (cuBLAS reads y once as the GEMM's C), instead of a GEMM and a separate add."""
    out = layer.quantized_forward(x, packed, bias)
    xd = torch.nn.functional.linear(x, layer.lowrank_down.to(x.dtype))
    up = layer.lowrank_up.to(x.dtype)
    return torch.addmm(out.reshape(-1, up.shape[0]), xd.reshape(-1, up.shape[1]), up.t()).view(out.shape)


def auto_form(spec, int8_codes, device):
    """EAGER_FORM "auto" for a layer of `spec` on `device`: the epilogue where it runs the Triton int8 GEMM, addmm
    elsewhere on CUDA, the shared unfused forward off CUDA."""
    if device.type != "cuda":
        return "unfused"
    triton_int8 = int8_codes and not spec.group_size and linear_ops.int8_runs_triton(device, spec.packed_int4)
    return "epilogue" if triton_int8 else "addmm"


def fast_branch_forward(layer, x, packed, bias, int8_codes, form=None):
    """The layer's output with its branch through the fast forms (eager, factors on x's device; CUDA and Triton but
    for "addmm"), or None where they do not apply or the form is "unfused" (the layer's shared forward then adds the
    branch as two GEMMs and an add). form: one of EAGER_FORMS, None for EAGER_FORM; "fold" falls back to "fused"
    where it does not hold; group-wise layers take "epilogue", "addmm" or "unfused"."""
    form = EAGER_FORM if form is None else form
    if form not in EAGER_FORMS:
        raise ValueError(f"low-rank branch form must be one of {', '.join(EAGER_FORMS)}, got {form!r}")
    if torch.compiler.is_compiling():
        return traced_branch_forward(layer, x, packed, bias)
    spec = layer.quant_spec
    if form == "auto":
        form = auto_form(spec, int8_codes, x.device)
    if form == "addmm" and layer.lowrank_down.device == x.device:  # plain torch: any device, any path
        return addmm_forward(layer, x, packed, bias, *_prepared(layer, x, False))
    if form in ("unfused", "addmm") or not (kernels.runs_triton(x) and layer.lowrank_down.device == x.device
                                 and x.dtype in (torch.bfloat16, torch.float16)):
        layer.__dict__.pop("_branch_prepared", None)  # no stale copies on another device
        return None
    if spec.group_size and form != "epilogue":
        return None  # the fused and folded forms run cuBLAS GEMMs, which have no group scales
    if form == "epilogue":
        down, up = _prepared(layer, x, False)
        return linear_ops.qgemm_linear(x, packed, layer.weight_scale, bias, layer.out_features, spec.packed_int4,
                                       int8_codes, torch.nn.functional.linear(x, down), up)
    fold = form == "fold" and not int8_codes and fold_holds(spec) \
        and (layer.in_features + spec.rank) % 16 == 0  # FP8 GEMM's K rule
    down, up = _prepared(layer, x, fold)
    if fold:
        wide = wide_fp8_weight(packed, spec.packed_int4, up, layer.out_features, layer.in_features)
        return fold_fast(x, wide, layer.weight_scale, bias, down)
    return fused_fast(x, packed, layer.weight_scale, bias, layer.out_features, spec.packed_int4, down, up, int8_codes)
