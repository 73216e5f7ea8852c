"""Quantization specs: "W4A8", "W8A8-g64", "W4A8-tensor", "W4A16" (weight only)."""
import re
from dataclasses import dataclass

WEIGHT_BITS = range(2, 9)
ACTIVATION_BITS = (*range(2, 9), 16)
_SPEC = re.compile(r"W([0-9]{1,4})A([0-9]{1,4})((?:-[A-Z0-9]+)*)")


class QuantSpecError(ValueError):
    pass


@dataclass(frozen=True)
class QuantSpec:
    """Symmetric integer quantization of a layer: weights per output channel or per group of input
    channels, activations quantized dynamically (per token / per pixel, or per tensor); a_bits 16 = weight-only."""
    w_bits: int
    a_bits: int
    weight_granularity: str = "channel"
    group_size: int | None = None
    act_granularity: str = "token"

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
        if self.act_granularity not in ("token", "tensor"):
            raise QuantSpecError(f"activation granularity must be 'token' or 'tensor', got {self.act_granularity!r}")

    @classmethod
    def parse(cls, text):
        """'W<w>A<a>' plus optional '-g<N>' (weight groups of N input channels) and '-tensor'/'-token'."""
        if isinstance(text, QuantSpec):
            return text
        match = _SPEC.fullmatch(str(text).strip().upper().replace("_", "-"))
        if not match:
            raise QuantSpecError(f"cannot parse quantization spec {text!r}; expected e.g. 'W8A8', 'W4A8-g128', 'W4A8-tensor'")
        fields = {"w_bits": int(match[1]), "a_bits": int(match[2])}
        given = {}  # option kind -> the option text, so that a second one of a kind is refused, not last-wins
        for option in filter(None, match[3].split("-")):
            if re.fullmatch(r"G[0-9]{1,9}", option):
                kind, update = "weight group size", dict(weight_granularity="group", group_size=int(option[1:]))
            elif option in ("TENSOR", "TOKEN"):
                kind, update = "activation granularity", {"act_granularity": option.lower()}
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
        return text

    def with_activations(self, a_bits):
        return QuantSpec(self.w_bits, a_bits, self.weight_granularity, self.group_size, self.act_granularity)

    def __str__(self):
        return self.name
