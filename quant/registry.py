"""The quantization backends by name (the loader nodes' and the command line's choices, in this order) and
`get_backend(name)`. Kept apart from backends.py so that auto.py, which builds on the backends' classes, is
registered here without an import circle. A new backend: its class in backends.py (or a module of its own) and
one line in BACKENDS."""
from .auto import AutoBackend
from .backends import (BackendError, BitsAndBytesBackend, ComfyKitchenBackend, Fp8Backend, Int8Backend,
                       SimulateBackend, TorchAOBackend)

BACKENDS = {"auto": AutoBackend, "simulate": SimulateBackend, "fp8": Fp8Backend, "int8": Int8Backend,
            "comfy_kitchen": ComfyKitchenBackend,
            "bitsandbytes": BitsAndBytesBackend, "torchao": TorchAOBackend}
DEFAULT_BACKEND = "auto"


def get_backend(name):
    if name not in BACKENDS:
        raise BackendError(f"unknown quantization backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]()
