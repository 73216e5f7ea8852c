"""Quantization specs: "W4A8", "W8A8-g64", "W4A8-tensor", "W4A16" (weight only), "W4A4-g64-r32" (16-bit low-rank
branch of rank 32 beside the quantized weight), "W4A4-g64-ag64" (activations with one scale per group of 64 input
channels of each token)."""
import re
from dataclasses import dataclass, replace

from . import numerics

WEIGHT_BITS = range(2, 9)
ACTIVATION_BITS = (*range(2, 9), 16)
RANKS = range(1, 1025)
FACTOR_BITS = 16  # the low-rank factors and (in the nominal count) the scales are 16-bit
_SPEC = re.compile(r"W([0-9]{1,4})A([0-9]{1,4})((?:-[A-Z0-9]+)*)")


class QuantSpecError(ValueError):
    pass


@dataclass(frozen=True)
class QuantSpec:
    """Symmetric integer quantization of a layer: weights per output channel or per group of input
    channels, activations quantized dynamically (per token / per pixel, per group of input channels of each token,
    or per tensor); a_bits 16 = weight-only.
    rank: a 16-bit low-rank branch W ~= up @ down + Q(W - up @ down) of this rank beside the quantized weight
    (quant/lowrank.py), None for none."""
    w_bits: int
    a_bits: int
    weight_granularity: str = "channel"
    group_size: int | None = None
    act_granularity: str = "token"
    rank: int | None = None
    act_group_size: int | None = None

    def __post_init__(self):
        if self.w_bits not in WEIGHT_BITS:
            raise QuantSpecError(f"weight bits must be 2..8, got {self.w_bits}")
        if self.a_bits not in ACTIVATION_BITS:
            raise QuantSpecError(f"activation bits must be 2..8 or 16 (unquantized), got {self.a_bits}")
        if self.weight_granularity not in ("channel", "group"):
            raise QuantSpecError(f"weight granularity must be 'channel' or 'group', got {self.weight_granularity!r}")
        if (self.weight_granularity == "group") != (self.group_size is not None):
            raise QuantSpecError("a group size is given exactly when the weight granularity is 'group'")
        if self.group_size is not None and (self.group_size < 2 or self.group_size % 2):
            raise QuantSpecError(f"group size must be an even number >= 2, got {self.group_size}")
        if self.act_granularity not in ("token", "tensor", "group"):
            raise QuantSpecError(f"activation granularity must be 'token', 'tensor' or 'group', "
                                 f"got {self.act_granularity!r}")
        if (self.act_granularity == "group") != (self.act_group_size is not None):
            raise QuantSpecError("an activation group size is given exactly when the activation granularity is "
                                 "'group'")
        if self.act_group_size is not None and self.act_group_size < 2:
            raise QuantSpecError(f"activation group size must be >= 2, got {self.act_group_size}")
        if self.rank is not None and self.rank not in RANKS:
            raise QuantSpecError(f"low-rank branch rank must be 1..1024, got {self.rank}")

    @classmethod
    def parse(cls, text):
        """'W<w>A<a>' plus optional '-g<N>' (weight groups of N input channels), '-tensor'/'-token'/'-ag<N>'
        (activation scales per tensor, per token, or per group of N input channels of each token) and '-r<N>' (a
        16-bit low-rank branch of rank N)."""
        if isinstance(text, QuantSpec):
            return text
        match = _SPEC.fullmatch(str(text).strip().upper().replace("_", "-"))
        if not match:
            raise QuantSpecError(f"cannot parse quantization spec {text!r}; expected e.g. 'W8A8', 'W4A8-g128', "
                                 "'W4A8-tensor', 'W4A4-g64-r32'")
        fields = {"w_bits": int(match[1]), "a_bits": int(match[2])}
        given = {}  # option kind -> the option text, so that a second one of a kind is refused, not last-wins
        for option in filter(None, match[3].split("-")):
            if re.fullmatch(r"G[0-9]{1,9}", option):
                kind, update = "weight group size", dict(weight_granularity="group", group_size=int(option[1:]))
            elif re.fullmatch(r"R[0-9]{1,9}", option):
                kind, update = "low-rank branch rank", {"rank": int(option[1:])}
            elif option in ("TENSOR", "TOKEN"):
                kind, update = "activation granularity", {"act_granularity": option.lower()}
            elif re.fullmatch(r"AG[0-9]{1,9}", option):
                kind = "activation granularity"
                update = dict(act_granularity="group", act_group_size=int(option[2:]))
            else:
                raise QuantSpecError(f"unknown option {option!r} in quantization spec {text!r}")
            if kind in given:
                raise QuantSpecError(f"quantization spec {text!r} gives the {kind} twice ({given[kind]!r} and "
                                     f"{option!r}); give it once")
            given[kind] = option
            fields.update(update)
        if fields["a_bits"] >= 16 and "activation granularity" in given:
            raise QuantSpecError(f"quantization spec {text!r} is weight-only (A16): it has no activation "
                                 f"quantization for {given['activation granularity']!r} to apply to")
        return cls(**fields)

    @property
    def weight_only(self):
        return self.a_bits >= 16

    @property
    def packed_int4(self):
        return self.w_bits <= 4

    @property
    def name(self):
        text = f"W{self.w_bits}A{self.a_bits}"
        if self.group_size:
            text += f"-g{self.group_size}"
        if self.act_granularity == "tensor" and not self.weight_only:
            text += "-tensor"
        if self.act_granularity == "group" and not self.weight_only:
            text += f"-ag{self.act_group_size}"
        if self.rank:
            text += f"-r{self.rank}"
        return text

    @property
    def base(self):
        """The spec without its low-rank branch: what the quantized path (and a backend's kernels) see."""
        return self.with_rank(None)

    def with_activations(self, a_bits):
        return replace(self, a_bits=a_bits)

    def with_rank(self, rank):
        return replace(self, rank=rank)

    def __str__(self):
        return self.name


def bits_per_weight(spec, out_features, in_columns, stored=False):
    """Bits per weight of one [out, in] layer (in: input columns, in/groups * kernel size for convs) under `spec`:
    weight codes + scales + low-rank factors (r * (out + in) 16-bit numbers), divided by out * in.
    stored=False: the nominal count papers use (w_bits-bit codes, 16-bit scales), e.g. W4-g64-r32 on 3072 x 3072:
    4 + 16/64 + 16 * 32 * 6144 / 3072**2 = 4.58.
    stored=True: what this pack keeps in memory and in its cache: codes in int8 bytes for W5-W8 and two per byte for
    W2-W4 (an odd row padded), float16 group scales (float32 with one group per row), 16-bit factors (fp8 backend W8
    codes are e4m3 bytes: also 8 bits). E.g. W4-g64-r32 on 3072 x 3072 stores the nominal 4.58.
    A whole model: quant.layers.bits_per_weight_of(module)."""
    spec = QuantSpec.parse(spec)
    weights = out_features * in_columns
    if weights <= 0:
        raise ValueError(f"a layer needs out and in sizes >= 1, got {out_features} x {in_columns}")
    groups = in_columns // spec.group_size if spec.group_size else 1
    if stored:
        code_bits = out_features * ((in_columns + 1) // 2 * 8 if spec.packed_int4 else in_columns * 8)
        scale_bits = 8 * numerics.scale_dtype(groups).itemsize
    else:
        code_bits, scale_bits = weights * spec.w_bits, FACTOR_BITS
    rank = min(spec.rank or 0, out_features, in_columns)
    return (code_bits + out_features * groups * scale_bits + rank * (out_features + in_columns) * FACTOR_BITS) \
        / weights
