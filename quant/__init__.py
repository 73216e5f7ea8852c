"""Backbone quantization in plain torch: specs, layer policy, packed layers, backends, cache."""
from .apply import QuantReport, module_bytes, quantize_module
from .backends import BackendError
from .registry import BACKENDS
from .policy import DEFAULT_POLICY, LayerPolicy
from .spec import QuantSpec, QuantSpecError

__all__ = ["QuantSpec", "QuantSpecError", "LayerPolicy", "DEFAULT_POLICY", "quantize_module", "QuantReport",
           "module_bytes", "BACKENDS", "BackendError"]
