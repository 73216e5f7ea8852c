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
split  the fold with each side of the branch kept as two e4m3 numbers (hi + lo, about 7 significant bits): K grows
       by 3r columns (a_hi b_hi + a_hi b_lo + a_lo b_hi), x down'^T comes from one cuBLAS GEMM and the quantization
       kernel writes its split columns; no pass over y beyond the GEMM's own. For W4A8 fp8 layers (per channel, and
       the group-wise e4m3 form), where the int4 weight is unpacked per call anyway (into the wider buffer). On the
       wide digits variant's trained 3x3 convs (as GEMMs, real activations, rank 16 / 32) the branch came within
       0.11-0.19% of its float64 product (bf16's unfused branch: 0.23%) wherever the split's A side stayed below 896;
       it did not where the residual beside the branch is tiny (up / s large), so a layer takes it only where the
       data-free bound split_bound(...) <= SPLIT_BOUND_MAX (the layers that went wrong there had 224-23473).
addmm  x down^T as one cuBLAS GEMM, then y += (x down^T) up^T in place, y being the GEMM's C: cuBLAS reads and
       writes y once. The layers' shared unfused forward writes the product and adds it in another kernel (two
       more passes over y and one more launch). This is what bench/kernels8.py and bench/gpu_gemm.py time as
       "unfused"; it rounds the sum once where the shared forward rounds the product and then the sum.
Every function has a torch definition that runs anywhere (the CPU tests) beside the Triton one."""
from typing import Optional

import torch

from . import fp8_codes as fp8, int8_codes as int8, kernels, linear_ops

FOLD_B_MAX = 448.0
SPLIT_TERMS = 3  # a_hi b_hi + a_hi b_lo + a_lo b_hi (a_lo b_lo is below both sides' precision)
SPLIT_B_MAX = 448.0
# split_bound above which a layer keeps the addmm form: on the digits convs the A side's largest value was 0.5-3x
# the bound, and the split is exact to ~7 bits only below 896.
SPLIT_BOUND_MAX = 128.0
# Where the split fold's down-projection x down'^T runs: "cublas" (one 16-bit GEMM, then the quantization kernel reads
# it) or "fused" (inside the quantization kernel's pass over x, as the fused form: x read once, but that kernel
# measured 3-4x slower at K = 12288-15360 with its dot). Neither is timed for the split yet.
SPLIT_DOWNS = ("cublas", "fused")
SPLIT_DOWN = "cublas"
# The eager form a quantized layer's branch takes on CUDA. Measured on an H100 (2026-12-07, bench/kernels8.py and
# bench/gpu_gemm.py, full FLUX's linears per step, rank 32): on the cuBLAS paths addmm (the benchmarks' "unfused")
# +17.9 to +24.3 ms, fused +31.2 / +32.7, fold +25.7 (and its FP8 branch is 2.6% of the branch off the 16-bit
# reference); on the Triton int8 GEMM (W8 codes) addmm +25.4, the up-projection in its epilogue +11.9. End to end
# (H100, FLUX 8 + 16 blocks, eager, W4A8-r32 over W4A8, three runs: bench/results/h100_20261207.md, session #6):
# split +13.4 / +8.5 / +6.9%, addmm +14.2 / +11.3 / +9.8%, the old unfused +14.8%; GPU time split +8.0%, addmm +11%.
# "auto": the split for W4A8 on FP8 codes, the epilogue where the layer runs the Triton int8 GEMM
# (linear_ops.int8_runs_triton), else addmm on CUDA; "unfused" off CUDA (the CPU's numbers stay the shared
# forward's). The other forms stay selectable for measurements.
EAGER_FORM = "auto"
EAGER_FORMS = ("auto", "unfused", "addmm", "split", "fused", "fold", "epilogue")


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
    def a_tail(rows, scale, padded):
        xd = torch.nn.functional.pad(rows.float() @ down_folded.float().t(), (0, 0, 0, padded - rows.shape[0]))
        return (xd * (1.0 / scale)).clamp(-fp8.E4M3_MAX, fp8.E4M3_MAX).to(fp8.E4M3)
    return linear_ops.fp8_gemm_reference(x, weight_codes, weight_scale, bias, a_tail, up_codes)


def split_e4m3(values):
    """(hi, lo) e4m3 of float32 values: hi = e4m3(v), lo = e4m3(v - hi), each clamped to +-448. hi + lo holds v to
    about 7 significant bits where one e4m3 holds 4 (lo reaches e4m3's subnormals only for |v| below ~2**-2), and
    up to |v| = 896, beyond which it saturates."""
    hi = values.clamp(-fp8.E4M3_MAX, fp8.E4M3_MAX).to(fp8.E4M3)
    return hi, (values - hi.float()).clamp(-fp8.E4M3_MAX, fp8.E4M3_MAX).to(fp8.E4M3)


def split_columns(rank):
    """Columns the split fold adds to K: 3 per branch component, padded to a multiple of 16 (the FP8 GEMM's K rule)."""
    return -(-SPLIT_TERMS * rank // 16) * 16


def split_fold_factors(down, up, weight_scale, b_max=SPLIT_B_MAX):
    """(down' [r, K] in down's dtype, B tail [N, split_columns(r)] e4m3 = [up_hi, up_lo, up_hi, 0...]): the fold's
    factors (fold_factors) with up / (c s) kept as two e4m3 numbers, B's largest at b_max."""
    per_channel = up.float() / weight_scale.float().view(-1, 1)
    c = (per_channel.abs().amax(dim=0) / b_max).clamp(min=torch.finfo(torch.float32).tiny)
    down_folded = (down.float() * c[:, None]).to(down.dtype)
    hi, lo = split_e4m3(per_channel / c)
    return down_folded, _padded_columns([hi, lo, hi], split_columns(up.shape[1]))


def _padded_columns(parts, columns):
    """The e4m3 parts side by side, zero columns after them up to `columns`: one cat (inductor cannot lower a
    slice assignment into an e4m3 buffer)."""
    rows, used = parts[0].shape[0], sum(part.shape[1] for part in parts)
    zeros = torch.zeros((rows, columns - used), dtype=fp8.E4M3, device=parts[0].device)
    return torch.cat([*parts, zeros], dim=1)


def split_bound(down, up, weight_scale):
    """max_j max_n |up_nj / s_n| * ||down_j||: the size of the split fold's A side (a_j = c_j x down_j / s_x with
    c_j = max_n |up_nj / s_n| / 448, s_x = max|x| / 448) for an x of unit spread per max, without data."""
    per_channel = up.float() / weight_scale.float().view(-1, 1)
    return float((per_channel.abs().amax(dim=0) * down.float().norm(dim=1)).max())


def split_activation_tail(xd, scale, padded_rows):
    """A side of the split fold: [a_hi, a_hi, a_lo, 0...] e4m3 [padded_rows, split_columns(r)] of a = xd * (1 /
    scale) (float32; xd [rows, r] as the down-projection rounded it, scale the rows' FP8 scales); padding rows 0."""
    rows, rank = xd.shape
    values = torch.nn.functional.pad(xd.float() * (1.0 / scale[:rows]), (0, 0, 0, padded_rows - rows))
    hi, lo = split_e4m3(values)
    return _padded_columns([hi, hi, lo], split_columns(rank))


def split_fold_reference(x, weight_codes, weight_scale, bias, down_folded, b_tail):
    """Torch definition of the split fold: one FP8 GEMM of A = [codes(x), split_activation_tail(x down'^T)] and
    B = [W codes, b_tail]: the branch as a_hi b_hi + a_hi b_lo + a_lo b_hi, each side to ~7 bits."""
    def a_tail(rows, scale, padded):
        return split_activation_tail(torch.nn.functional.linear(rows, down_folded.to(rows.dtype)), scale, padded)
    return linear_ops.fp8_gemm_reference(x, weight_codes, weight_scale, bias, a_tail, b_tail)


def wide_fp8_weight(packed, int4, up_codes, rows, cols, ratio=None):
    """[rows, cols + t] e4m3: the layer's weight codes (e4m3; int4 unpacked, or with group `ratio` the e4m3 form)
    with the folded up codes [rows, t] after them, the int4 cases in one launch."""
    tk = kernels.triton_kernels
    wide = torch.empty((rows, cols + up_codes.shape[1]), device=packed.device, dtype=fp8.E4M3)
    if ratio is not None:
        tk.int4_groups_e4m3(packed, ratio, rows, cols, out=wide, tail=up_codes)
    elif int4:
        tk.int4_unpack(packed, rows, cols, fp8.E4M3, out=wide, tail=up_codes)
    else:
        wide[:, :cols].copy_(packed)
        wide[:, cols:].copy_(up_codes)
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


def split_fast(x, packed, ratio, channel, bias, out_features, down_folded, tail):
    """The split fold on CUDA: x down'^T (cuBLAS), one quantization launch writing x's codes and the split columns,
    one launch unpacking the int4 weight (group-wise: through `ratio`, the e4m3 form) and copying the B tail after it,
    one FP8 GEMM with the channel scales."""
    tk = kernels.triton_kernels
    rows = x.reshape(-1, x.shape[-1])
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    count, cols = rows.shape
    padded = -(-count // 16) * 16
    if SPLIT_DOWN not in SPLIT_DOWNS:
        raise ValueError(f"SPLIT_DOWN must be one of {', '.join(SPLIT_DOWNS)}, got {SPLIT_DOWN!r}")
    if SPLIT_DOWN == "fused":
        codes, scale, _ = tk.quantize_act(rows, padded, False, down=down_folded, split=True, tail=tail.shape[1])
    else:
        xd = torch.nn.functional.linear(rows, down_folded)
        codes, scale, _ = tk.quantize_act(rows, padded, False, split=xd, tail=tail.shape[1])
    wide = wide_fp8_weight(packed, True, tail, out_features, cols, ratio)
    out = torch._scaled_mm(codes, wide.t(), scale_a=scale, scale_b=channel.view(1, -1), bias=bias, out_dtype=x.dtype,
                           use_fast_accum=fp8.FAST_ACCUMULATION)
    return (out if padded == count else out[:count]).view(*x.shape[:-1], out_features)


def split_takes(spec, int8_codes=False):
    """Whether a layer of `spec` can run the split fold at all: int4 weights (unpacked per call anyway) beside FP8
    activation codes."""
    return not int8_codes and spec.packed_int4 and spec.a_bits == 8


def _split_applies(layer, x):
    """The split fold's conditions that do not depend on the branch's values: a W4A8 fp8 layer (per channel, or
    group-wise in the e4m3 form) with K a multiple of 16 and its scales and factors on x's device."""
    scale = layer.weight_scale
    return split_takes(layer.quant_spec) and not layer.in_features % 16 and scale.device == x.device \
        and layer.lowrank_down.device == x.device \
        and (not linear_ops._grouped(scale) or linear_ops.GROUP_GEMM == "e4m3")


def split_factors(down, up, weight_scale, dtype):
    """(group ratios or None, channel scales, down' in `dtype`, B tail, split_bound) of a branch against the layer's
    scales, made once and kept on `up` itself while the three tensors are the same (storage and in-place version):
    a moved or cast buffer (offload) is a new tensor and gets them afresh."""
    tensors = (down, up, weight_scale)
    key = (dtype, *(t._version for t in tensors), *(t.data_ptr() for t in tensors), up.device)
    memo = getattr(up, "_qsched_split", None)
    if memo is None or memo[0] != key:
        ratio, channel = linear_ops.group_ratios(weight_scale) if linear_ops._grouped(weight_scale) \
            else (None, weight_scale)
        folded, tail = split_fold_factors(down.to(dtype), up, channel)
        memo = (key, (ratio, channel, folded, tail, split_bound(down, up, channel)))
        up._qsched_split = memo
    return memo[1]


def split_linear(x, packed, weight_scale, bias, out_features, down, up):
    """A W4A8 fp8 layer's output with its branch by the split fold (split_fast on CUDA, its torch definition
    elsewhere), or None where split_bound > SPLIT_BOUND_MAX."""
    ratio, channel, folded, tail, bound = split_factors(down, up, weight_scale, x.dtype)
    if bound > SPLIT_BOUND_MAX:
        return None
    if kernels.triton_kernels is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        return split_fast(x, packed, ratio, channel, bias, out_features, folded, tail)
    cols = x.shape[-1]
    weight = linear_ops.group_e4m3_reference(packed, weight_scale, out_features, cols)[0] if ratio is not None \
        else linear_ops.kernels_free_int4(packed, out_features, cols, fp8.E4M3)
    return split_fold_reference(x, weight, channel, bias, folded, tail)


def split_or_addmm_linear(x, packed, weight_scale, bias, out_features, down, up):
    """split_linear, or where its bound does not hold the 8-bit path plus one addmm of the branch: what the custom
    op `qsched::split_linear` runs (a compiled graph holds the whole layer as one node, the choice made per call)."""
    out = split_linear(x, packed, weight_scale, bias, out_features, down, up)
    if out is not None:
        return out
    if linear_ops._grouped(weight_scale):
        out = linear_ops.qgemm_linear(x, packed, weight_scale, bias, out_features, True, False)
    else:
        out = linear_ops.fp8_linear(x, packed, weight_scale, bias, out_features, True)
    return add_branch_(out, x, down.to(x.dtype), up.to(x.dtype))


def _register_split():
    if hasattr(torch.ops.qsched, "split_linear"):
        return torch.ops.qsched.split_linear.default

    @torch.library.custom_op("qsched::split_linear", mutates_args=())
    def op(x: torch.Tensor, packed: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
           out_features: int, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return split_or_addmm_linear(x, packed, weight_scale, bias, out_features, down, up)

    @op.register_fake
    def _(x, packed, weight_scale, bias, out_features, down, up):
        return x.new_empty((*x.shape[:-1], out_features))

    return torch.ops.qsched.split_linear.default


SPLIT_OP = _register_split()


def split_branch_forward(layer, x, packed, bias):
    """The split fold of a W4A8 fp8 layer (per channel, or group-wise in the e4m3 form); None where it does not
    apply (other specs, factors or scales on another device, K not a multiple of 16, or split_bound too large)."""
    if not _split_applies(layer, x):
        return None
    return split_linear(x, packed, layer.weight_scale, bias, layer.out_features, layer.lowrank_down,
                        layer.lowrank_up)


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


def _sources(layer):
    """What the prepared factors derive from: the branch and scale buffers, and their in-place versions."""
    buffers = (layer.lowrank_down, layer.lowrank_up, layer.weight_scale)
    return buffers, tuple(buffer._version for buffer in buffers)


def _cached(layer, name, key, make):
    """layer.__dict__[name]'s value if it was made from the same buffers (unchanged since) under `key`, else make()
    kept there (a LoRA leaves the buffers alone; moving the layer makes new ones, which are prepared again)."""
    (buffers, versions), cached = _sources(layer), layer.__dict__.get(name)
    if cached is not None and all(a is b for a, b in zip(cached[0], buffers)) and cached[1] == (versions, key):
        return cached[2]
    value = make()
    layer.__dict__[name] = (buffers, (versions, key), value)
    return value


def _prepared(layer, x, fold):
    """(down, up or up codes) for the fast forms in x's dtype, converted / folded once per set of buffers."""
    def make():
        down, up = layer.lowrank_down.to(x.dtype), layer.lowrank_up.to(x.dtype)
        return fold_factors(down, up, layer.weight_scale) if fold else (down, up)
    return _cached(layer, "_branch_prepared", (x.dtype, fold), make)


def add_branch_(out, x, down, up):
    """out += (x down^T) up^T by one in-place addmm, down [r, in] and up [out, r] in x's dtype on x's device; out is
    a GEMM's fresh contiguous output, so `view` (never a copy) writes into what is returned."""
    out.view(-1, up.shape[0]).addmm_(torch.nn.functional.linear(x, down).view(-1, up.shape[1]), up.t())
    return out


def addmm_forward(layer, x, packed, bias, down, up):
    """The layer's 8-bit output with the branch added into it by one in-place addmm (form "addmm")."""
    return add_branch_(layer.quantized_forward(x, packed, bias), x, down, up)


def traced_branch_forward(layer, x, packed, bias, form):
    """Under torch.compile: where `form` is "split" and it applies, the layer as one opaque node (the custom op
    `qsched::split_linear`: the eager kernels, the factors kept between calls; traced torch made the factors per
    call and copied the codes into the wide operands, +19% of a full FLUX step on an H100 against the eager split's
    +7%); else the layer's 8-bit path (traced torch) and the branch's up-projection as one addmm into its output
    (cuBLAS reads y once as the GEMM's C), instead of a GEMM and a separate add."""
    if form == "split" and _split_applies(layer, x):  # whether the bound holds is decided per call, inside the op
        return SPLIT_OP(x, packed, layer.weight_scale, bias, layer.out_features, layer.lowrank_down, layer.lowrank_up)
    out = layer.quantized_forward(x, packed, bias)
    xd = torch.nn.functional.linear(x, layer.lowrank_down.to(x.dtype))
    up = layer.lowrank_up.to(x.dtype)
    return torch.addmm(out.reshape(-1, up.shape[0]), xd.reshape(-1, up.shape[1]), up.t()).view(out.shape)


def auto_form(spec, int8_codes, device):
    """EAGER_FORM "auto" for a layer of `spec` on `device`: the epilogue where it runs the Triton int8 GEMM, the
    split fold for W4A8 on FP8 codes (it steps aside to addmm where its bound does not hold), addmm elsewhere on CUDA,
    the shared unfused forward off CUDA."""
    if device.type != "cuda":
        return "unfused"
    if split_takes(spec, int8_codes):
        return "split"
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
    spec = layer.quant_spec
    if form == "auto":
        form = auto_form(spec, int8_codes, x.device)
    if torch.compiler.is_compiling():
        return traced_branch_forward(layer, x, packed, bias, form if split_takes(spec, int8_codes) else None)
    if form == "split":
        out = None if int8_codes else split_branch_forward(layer, x, packed, bias)
        if out is not None:
            return out
        form = "addmm"  # where the split does not apply
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
