"""The loaders' `cuda_graphs` option: the diffusion model's forward replayed as CUDA graphs (quant/cuda_graphs.py),
installed as a ComfyUI diffusion-model wrapper on the ModelPatcher (ComfyUI 0.3.64 and 0.33 call it around the
backbone's forward: SD1.x/SDXL UNet, FLUX, Chroma, ...; models without that hook, such as SD3's MMDiT, stay eager).
Clones (LoRA, sampler nodes) share the wrapper, hence the graphs of their common model.

What this layer adds to the plain-torch rules is what only ComfyUI knows: a call runs eager when the model is
another copy than the one the option was set on, another diffusion-model wrapper runs too (torch.compile), model
patches are set (attention/block patches and replacements: Python that may read the step), ComfyUI runs the
weights offloaded (low VRAM, DynamicVRAM) or on several GPUs, or an attention override other than the pack's own
is set. The weights key adds the patcher that runs and the weight patches it applied to the addresses of the
weights, so another patcher (LoRA, object patches) captures again; unloading the model releases the graphs."""
import weakref

import comfy.patcher_extension

from ..quant.cuda_graphs import GraphRunner, Unsupported, WeightState, flatten
from ..quant.options import CUDA_GRAPHS_CHOICES
from .attention import OVERRIDE_KEY, int8_attention_override

KEY = "qsched_cuda_graphs"
DIFFUSION_MODEL = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
# ComfyUI's per-call weight functions (low-VRAM LoRA, weight wrappers): set on a layer, it is not graph-safe
WEIGHT_HOOKS = ("weight_function", "bias_function", "weight_lowvram_function", "bias_lowvram_function")
# transformer_options entries the backbones do not compute from: the sampler's and the hooks' bookkeeping
PASSED_THROUGH = ("wrappers", "callbacks", "uuids", "cond_or_uncond", "prefetch_dynamic_vbars", "patches",
                  "patches_replace", OVERRIDE_KEY)


class GraphedDiffusionModel:
    """The DIFFUSION_MODEL wrapper: executor(*args, **kwargs) through a GraphRunner."""

    def __init__(self, base_model, backend=None):
        """base_model: ComfyUI's model (patcher.model), or a bare backbone (benchmarks)."""
        self.base_model = weakref.ref(base_model)
        self.runner = GraphRunner(backend)
        self.weight_state = None

    def __call__(self, executor, *args, **kwargs):
        args = list(args)
        options, where = _transformer_options(args, kwargs)
        reason = self.comfy_reason(executor, options)
        if reason is not None:
            return self.runner.eager(reason, lambda _: executor(*args, **kwargs), None)
        passed = {key: options[key] for key in PASSED_THROUGH if key in options}
        keyed = {key: value for key, value in options.items() if key not in passed}
        for key, value in keyed.items():
            try:
                flatten(value, [])
            except Unsupported:
                return self.runner.eager(f"transformer option {key!r} ({type(value).__name__})",
                                         lambda _: executor(*args, **kwargs), None)

        def forward(inputs):
            call_args, call_kwargs, call_options = inputs
            call_args, call_kwargs = list(call_args), dict(call_kwargs)
            if where is not None:
                (call_kwargs if isinstance(where, str) else call_args)[where] = {**passed, **call_options}
            return executor(*call_args, **call_kwargs)

        if where is not None:
            (kwargs if isinstance(where, str) else args)[where] = None
        attention = "int8" if options.get(OVERRIDE_KEY) is int8_attention_override else None
        base = self.base_model()
        return self.runner.run(forward, (tuple(args), kwargs, keyed), key=(attention,),
                               weights=lambda: self.weights_key(base, executor.class_obj))

    def comfy_reason(self, executor, options):
        """Why ComfyUI's state rules out a graph for this call, or None."""
        base = self.base_model()
        if base is None or executor.class_obj is not getattr(base, "diffusion_model", base):
            return "another copy of the model"
        if any(wrapper is not self for wrapper in executor.wrappers):
            return "another diffusion-model wrapper (e.g. torch.compile)"
        if any(options.get("patches", {}).values()) or any(options.get("patches_replace", {}).values()):
            return "model patches"
        override = options.get(OVERRIDE_KEY)
        if override is not None and override is not int8_attention_override:
            return "another attention override"
        patcher = getattr(base, "current_patcher", None)
        if options.get("prefetch_dynamic_vbars") or getattr(patcher, "is_dynamic", lambda: False)():
            self.runner.release()
            return "DynamicVRAM streams the weights"
        if getattr(base, "model_lowvram", False) or getattr(base, "lowvram_patch_counter", 0):
            self.runner.release()
            return "weights partly offloaded (low VRAM)"
        if "multigpu_thread_device" in options:
            return "several GPUs"
        return None

    def weights_key(self, base, backbone):
        if self.weight_state is None:
            self.weight_state = WeightState(backbone, WEIGHT_HOOKS)
        addresses = self.weight_state.key(self.runner.backend.device_type)
        if addresses is None:
            return None
        patcher = getattr(base, "current_patcher", None)
        return (None if patcher is None else weakref.ref(patcher),
                getattr(base, "current_weight_patches_uuid", None), addresses)

    def on_detach(self, patcher, unpatch_all=True):
        """ComfyUI unloaded the model (detach with unpatch_all): its graphs and their memory go. ComfyUI also
        detaches a loaded model without unpatching each time it loads it again for a run: the graphs stay."""
        if unpatch_all:
            self.runner.release()


def _transformer_options(args, kwargs):
    """(transformer_options, where it sits: a kwargs key or an args index, None if absent). The backbones take it
    as the last positional argument before **kwargs (some by keyword)."""
    if isinstance(kwargs.get("transformer_options"), dict):
        return kwargs["transformer_options"], "transformer_options"
    if args and isinstance(args[-1], dict):
        return args[-1], len(args) - 1
    return {}, None


def set_cuda_graphs(patcher, cuda_graphs, backend=None):
    """Install the cuda_graphs choice on a ModelPatcher ('off': nothing); returns the wrapper or None."""
    if cuda_graphs not in CUDA_GRAPHS_CHOICES:
        raise ValueError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS_CHOICES)}, got {cuda_graphs!r}")
    if cuda_graphs == "off":
        return None
    wrapper = GraphedDiffusionModel(patcher.model, backend)
    patcher.remove_wrappers_with_key(DIFFUSION_MODEL, KEY)
    patcher.add_wrapper_with_key(DIFFUSION_MODEL, KEY, wrapper)
    patcher.remove_callbacks_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, KEY)
    patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, KEY, wrapper.on_detach)
    return wrapper


def backbone_options(backbone, backend=None):
    """(transformer_options that run a bare backbone's forward through a GraphedDiffusionModel, the wrapper): the
    wrapper as a sampler hands it over, for benchmarks and tests that call the backbone without a ModelPatcher."""
    wrapper = GraphedDiffusionModel(backbone, backend)
    return {"wrappers": {DIFFUSION_MODEL: {KEY: [wrapper]}}}, wrapper


def graphs_of(patcher):
    """The GraphedDiffusionModel installed on a ModelPatcher, None if none."""
    wrappers = patcher.get_wrappers(DIFFUSION_MODEL, KEY)
    return wrappers[0] if wrappers else None
