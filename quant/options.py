"""The load-time quantization options (quantization, backend, layer policy, cache), defined once for the quantized
loader nodes' inputs and the command line's arguments."""
from dataclasses import dataclass

from ..folders import QUANT_CACHE
from .registry import BACKENDS, DEFAULT_BACKEND

SPECS = ("W8A8", "W4A8", "W4A8-g128", "W4A8-g64", "W4A8-g64-r32", "W6A8", "W4A6", "W4A5", "W4A4", "W4A4-g64-r32",
         "W4A4-g64-ag64-r32", "W8A16", "W4A16", "W4A16-g128")
CACHE_FOLDER = QUANT_CACHE
CACHE_CHOICES = ("off", "on")
ATTENTION_CHOICES = ("sdpa", "int8")
CUDA_GRAPHS_CHOICES = ("off", "on")


@dataclass(frozen=True)
class QuantOption:
    name: str
    default: str
    choices: tuple       # None: free text
    help: str
    optional: bool = False  # added after workflows were saved: optional, so they load with the default


QUANT_OPTIONS = (
    QuantOption("quantization", "W4A8", SPECS, "W<weight bits>A<activation bits>; -g64: weight scales per group of "
                "64 inputs; -ag64: activation scales per group of 64 inputs of each token (what 4-bit activations need; "
                "simulate only); -r32: a 16-bit rank-32 low-rank branch beside the quantized weight (SVD of the FP "
                "weight at load; for 4-bit activations); A16: weight-only."),
    QuantOption("backend", DEFAULT_BACKEND, tuple(BACKENDS), "auto: the fastest path this device has per layer "
                "(FP8 GEMMs where 8-bit compute pays on Ada/Hopper, int8 GEMMs on Turing/Ampere, 8/4-bit storage with "
                "16-bit compute elsewhere, simulate on the CPU). simulate: packed weights, exact quantize-dequantize "
                "numerics, any width. fp8: W8A8/W4A8 through FP8 matmuls everywhere (Ada/Hopper). int8: W8A8/W4A8 "
                "through int8 matmuls (Turing and later; the CPU too). comfy_kitchen: W8A8 through ComfyUI's int8 "
                "kernels (0.33+). bitsandbytes / torchao: if installed."),
    QuantOption("layer_policy", "", None, "Extra rules, e.g. 'double_blocks.0.*=keep, *.qkv=W8A8, "
                "first_last=off'. Sensitive layers (embeddings, first/last, norms) stay in high precision by default."),
    QuantOption("cache", "off", CACHE_CHOICES, f"on: keep the quantized weights in models/{CACHE_FOLDER} (keyed by "
                "the file's content hash) for fast reloads."),
    QuantOption("attention", "sdpa", ATTENTION_CHOICES, "sdpa: ComfyUI's attention. int8: 8-bit attention "
                "(SageAttention-style: int8 Q.K^T with per-block scales, smoothed K, float32 softmax, 16-bit P.V; "
                "a Triton kernel on CUDA), installed as ComfyUI's attention override in the model options.",
                optional=True),
    QuantOption("cuda_graphs", "off", CUDA_GRAPHS_CHOICES, "on: the diffusion model's forward is captured as a "
                "CUDA graph per input shape and replayed (a step costs the host a few launches; for small-batch "
                "SDXL/FLUX where the CPU cannot launch kernels as fast as the GPU runs them). Up to 4 shapes, kept "
                "while the model stays loaded: it holds one forward's activations per shape on the GPU. Runs eager "
                "(same result) on the CPU, with weights offloaded (low VRAM, DynamicVRAM: start ComfyUI with "
                "--disable-dynamic-vram), with model patches or another diffusion-model wrapper (torch.compile), "
                "and for a forward that cannot be captured; a LoRA or other new weights capture again.",
                optional=True),
)
