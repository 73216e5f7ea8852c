"""Which layers get quantized, and how: sensitive layers stay in high precision, linears that see one row per
sample (adaLN modulation, UNet ResBlock time-embedding projections) are weight-only, user overrides by name
pattern win."""
import fnmatch
from dataclasses import dataclass, field

from .layers import is_quantizable
from .spec import QuantSpec, QuantSpecError

# Names as ComfyUI builds them (UNet, Flux, MMDiT) and as diffusers does; matched with fnmatch
# against the layer name without a leading "diffusion_model." / "model.diffusion_model.".
DEFAULT_KEEP = (
    # UNet (SD1.5/SDXL): conv_in, time/label embeddings, output head
    "input_blocks.0.0", "time_embed.*", "label_emb.*", "out.*",
    "conv_in", "conv_out", "time_embedding.*", "add_embedding.*",
    # Flux / MMDiT: patch and text embeddings, time/vector/guidance embeddings, final layer
    "img_in", "txt_in", "time_in.*", "vector_in.*", "guidance_in.*", "final_layer.*",
    "x_embedder*", "t_embedder.*", "y_embedder.*", "context_embedder", "time_text_embed.*", "norm_out.*", "proj_out",
)
# One row per sample: quantizing it per token buys nothing, and torchao's compiled int8 GEMM refuses < 17 rows.
DEFAULT_WEIGHT_ONLY = (
    "*.img_mod.lin", "*.txt_mod.lin", "*.modulation.lin", "*.adaLN_modulation.*",
    "*.norm1.linear", "*.norm1_context.linear", "*.norm.linear",
    "*.emb_layers.*", "*.time_emb_proj",
)
KEEP = "keep"
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _bare(name):
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


@dataclass(frozen=True)
class LayerDecision:
    name: str
    spec: QuantSpec | None  # None: kept in high precision
    reason: str


@dataclass(frozen=True)
class LayerPolicy:
    """overrides: (pattern, "keep" | spec text) pairs, the first matching one wins over the defaults.
    keep_first_last: also keep the first and last quantizable layer in registration order (for models
    whose names the defaults do not know, e.g. a plain nn.Sequential)."""
    keep: tuple = DEFAULT_KEEP
    weight_only: tuple = DEFAULT_WEIGHT_ONLY
    overrides: tuple = field(default=())
    keep_first_last: bool = True

    def __post_init__(self):
        # layers are matched without their "diffusion_model." prefix, so a rule written with it must be too
        object.__setattr__(self, "overrides", tuple((_bare(pattern), action) for pattern, action in self.overrides))

    @classmethod
    def parse(cls, text, **defaults):
        """'pattern=keep, pattern=W8A8, first_last=off' (commas, semicolons or new lines between rules)."""
        overrides, options = [], dict(defaults)
        for rule in filter(None, (r.strip() for r in str(text or "").replace(";", ",").replace("\n", ",").split(","))):
            pattern, sep, action = (part.strip() for part in rule.partition("="))
            if not sep or not pattern or not action:
                raise QuantSpecError(f"layer policy rule {rule!r} is not 'pattern=keep' or 'pattern=<spec>'")
            if pattern == "first_last":
                if action.lower() not in ("on", "off"):
                    raise QuantSpecError(f"first_last must be 'on' or 'off', got {action!r}")
                options["keep_first_last"] = action.lower() == "on"
            elif action.lower() == KEEP:
                overrides.append((pattern, KEEP))
            else:
                overrides.append((pattern, QuantSpec.parse(action).name))
        return cls(overrides=tuple(overrides), **options)

    def decide(self, name, spec, is_first_or_last=False):
        spec = QuantSpec.parse(spec)
        bare = _bare(name)
        for pattern, action in self.overrides:
            if fnmatch.fnmatchcase(bare, pattern):
                if action == KEEP:
                    return LayerDecision(name, None, f"override {pattern}")
                return LayerDecision(name, QuantSpec.parse(action), f"override {pattern}")
        if any(fnmatch.fnmatchcase(bare, pattern) for pattern in self.keep):
            return LayerDecision(name, None, "sensitive layer")
        if self.keep_first_last and is_first_or_last:
            return LayerDecision(name, None, "first/last layer")
        if not spec.weight_only and any(fnmatch.fnmatchcase(bare, p) for p in self.weight_only):
            return LayerDecision(name, spec.with_activations(16), "one row per sample: weight-only")
        return LayerDecision(name, spec, "default")

    def plan(self, module, spec):
        """A decision for every quantizable layer of `module`, in registration order. A user rule that decides
        no layer (a typo, a pattern for another model, one shadowed by an earlier rule) is an error, not a
        silent no-op."""
        names = [name for name, layer in module.named_modules() if name and is_quantizable(layer)]
        ends = {names[0], names[-1]} if names else set()
        decisions = [self.decide(name, spec, name in ends) for name in names]
        _check_every_rule_used(self.overrides, names)
        return decisions


def _check_every_rule_used(overrides, names):
    used = set()  # index of the rule deciding each layer: the first that matches, as in decide()
    for name in names:
        used.update(next(([i] for i, (pattern, _) in enumerate(overrides)
                          if fnmatch.fnmatchcase(_bare(name), pattern)), []))
    unused = [rule for i, rule in enumerate(overrides) if i not in used]
    if not unused:
        return
    problems = []
    for pattern, action in unused:
        matched = [name for name in names if fnmatch.fnmatchcase(_bare(name), pattern)]
        why = ("every layer it matches is decided by an earlier rule" if matched
               else "it matches no quantizable layer of this model")
        problems.append(f"'{pattern}={action}': {why}")
    example = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise QuantSpecError(f"layer policy rule(s) without effect: {'; '.join(problems)}. Patterns are matched with "
                         f"fnmatch against layer names such as {example or '(the model has no quantizable layers)'}")


DEFAULT_POLICY = LayerPolicy()
