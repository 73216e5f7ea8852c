"""CUDA graphs for one module's forward: captured once per input signature, then replayed, so a step costs the
host a handful of launches instead of one per kernel (at batch 1 an eager SDXL step is bound by the host).

A graph replays the kernels of the call it captured on the same memory: the same input buffers (new inputs are
copied into them), the weights at the addresses they had, the same shapes and the same Python decisions. So a
call replays only when all of that still holds, and runs eager otherwise:
- signature: the inputs' structure, every tensor's dtype, shape, strides and device, the values of non-tensor
  inputs, the caller's key, inference mode and autocast. A new signature is captured (at most `max_graphs`;
  beyond that it runs eager); a known one replays.
- weights: the caller's weights key (WeightState: the address of every parameter and buffer, None when they are
  not all resident on the device or a per-call weight hook is set). A different key releases every graph (their
  weights are gone or changed) and captures again; None releases them and runs eager.
- never captured: autograd on, inside torch.compile or another capture, tensors on another device type, inputs
  or outputs that are not tensors, numbers, strings or None in tuples, lists and dicts, or a forward that cannot
  be captured (a host sync, a CPU tensor): that signature then stays eager.

The capture primitive is a backend (`CudaBackend`: torch.cuda.CUDAGraph, warm-up and capture on a side stream,
one memory pool for the graphs of a runner), so the decisions are testable without a GPU."""
import logging
from collections import Counter

import torch

log = logging.getLogger("qsched.cuda_graphs")

MAX_GRAPHS = 4
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_PRIMITIVES = (type(None), bool, int, float, str, torch.dtype, torch.device)


class Unsupported(Exception):
    """A value a graph cannot hold; the message names its type."""


def flatten(tree, tensors):
    """Signature of an input tree (nested tuples, lists and dicts of tensors and primitives), appending its tensors
    to `tensors` in order; Unsupported for anything else."""
    kind = type(tree)
    if kind in _PLAIN_TENSORS:
        tensors.append(tree)
        return ("T", tree.dtype, tree.shape, tree.stride(), tree.device)
    if kind in _PRIMITIVES:
        return tree
    if kind is tuple or kind is list:
        return (kind.__name__, *(flatten(item, tensors) for item in tree))
    if kind is dict:
        return ("dict", *((key, flatten(value, tensors)) for key, value in tree.items()))
    raise Unsupported("a tensor subclass" if isinstance(tree, torch.Tensor) else kind.__name__)


def rebuild(tree, tensors):
    """`tree` with its tensors replaced, in order, by the items of the iterator `tensors`."""
    kind = type(tree)
    if kind in _PLAIN_TENSORS:
        return next(tensors)
    if kind is tuple or kind is list:
        return kind(rebuild(item, tensors) for item in tree)
    if kind is dict:
        return {key: rebuild(value, tensors) for key, value in tree.items()}
    return tree


def output_tensors(out):
    """The tensors of a forward's output (a tensor, or tuples / lists of them); Unsupported otherwise."""
    tensors = []
    flatten(out, tensors)
    if not tensors:
        raise Unsupported(type(out).__name__)
    return tensors


def clone_output(out):
    tensors = []
    flatten(out, tensors)
    return rebuild(out, iter([t.clone() for t in tensors]))


def _autocast(device_type):
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch before 2.4
        return torch.is_autocast_enabled(), None


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling


class WeightState:
    """What a captured graph assumes of a module's weights: every parameter and buffer at the address it had.

    `key(device_type)` is the tuple of those addresses (plus the counts of per-call weight hooks, attribute names
    in `hooks`, e.g. ComfyUI's low-VRAM weight functions), or None when a tensor is not on `device_type` or a hook
    is set. Merging a LoRA into new tensors, offloading and .to() all change addresses; a weight updated in place
    keeps its address and a replay reads its new values, as eager does."""

    def __init__(self, module, hooks=()):
        self.hooks = tuple(hooks)
        self.slots = [(m._parameters, m._buffers, m.__dict__) for m in module.modules()
                      if m._parameters or m._buffers or any(name in m.__dict__ for name in self.hooks)]
        self.checked = (None, None)  # ((fingerprint, device type), resident) of the last one checked

    def fingerprint(self):
        addresses = []
        for parameters, buffers, attributes in self.slots:
            for tensors in (parameters, buffers):
                for t in tensors.values():
                    if t is None:
                        continue
                    if type(t) in _PLAIN_TENSORS:
                        addresses.append(t.data_ptr())
                    else:  # a tensor subclass (e.g. ComfyUI's QuantizedTensor): the addresses of its inner tensors
                        addresses.extend(_subclass_addresses(t))
            for name in self.hooks:
                hook = attributes.get(name)
                if hook:
                    addresses.append((name, len(hook)))
        return tuple(addresses)

    def resident(self, device_type):
        for parameters, buffers, attributes in self.slots:
            if any(attributes.get(name) for name in self.hooks):
                return False
            for tensors in (parameters, buffers):
                if any(t is not None and t.device.type != device_type for t in tensors.values()):
                    return False
        return True

    def key(self, device_type):
        fingerprint = self.fingerprint()
        if self.checked[0] != (fingerprint, device_type):
            self.checked = ((fingerprint, device_type), self.resident(device_type))
        return fingerprint if self.checked[1] else None


def _subclass_addresses(t):
    flatten_inner = getattr(t, "__tensor_flatten__", None)
    if flatten_inner is None:
        return [id(t)]
    names = flatten_inner()[0]
    return [id(t), *(getattr(t, name).data_ptr() for name in names)]


class _Graph:
    __slots__ = ("graph", "inputs", "output")

    def __init__(self, graph, inputs, output):
        self.graph, self.inputs, self.output = graph, inputs, output


class GraphRunner:
    """Runs `forward(inputs)` as replays of CUDA graphs where it may, eager where it may not (module docstring).
    One runner per forward: the signature holds the inputs, not the function.

    `counts` tallies "capture", "replay" and "eager: <reason>" (for tests, benchmarks and the log)."""

    def __init__(self, backend=None, max_graphs=MAX_GRAPHS):
        self.backend = backend if backend is not None else CudaBackend()
        self.max_graphs = max_graphs
        self.graphs = {}    # signature -> _Graph, or the reason it cannot be captured
        self.weights = None
        self.pool = None
        self.counts = Counter()

    def run(self, forward, inputs, key=(), weights=lambda: ()):
        """forward(inputs)'s result. key: anything else the computation depends on (hashable); weights: returns
        the weights key (WeightState.key), None when they are not resident; called only when the rest allows a
        graph."""
        tensors = []
        try:
            signature = flatten(inputs, tensors)
            reason = self._device_reason(tensors) or self._mode_reason()
        except Unsupported as error:
            reason = f"{error} in the inputs"
        if reason is None:
            state = weights()
            if state is None:  # offloaded: the graphs' weights are gone, and so goes their memory
                self.release()
                reason = "weights not all resident on the device"
        if reason is not None:
            return self.eager(reason, forward, inputs)
        signature = (signature, key, torch.is_inference_mode_enabled(), _autocast(self.backend.device_type))
        if state != self.weights:
            self.release()
            self.weights = state
        entry = self.graphs.get(signature)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.eager(f"more than {self.max_graphs} input signatures", forward, inputs)
            return self._capture(signature, forward, inputs, tensors)
        if isinstance(entry, str):
            return self.eager(entry, forward, inputs)
        for static, tensor in zip(entry.inputs, tensors):
            static.copy_(tensor)
        entry.graph.replay()
        self.counts["replay"] += 1
        return clone_output(entry.output)

    def release(self):
        """Drop every graph and the memory pool (unloaded model, new weights)."""
        for entry in self.graphs.values():
            if isinstance(entry, _Graph):
                self.backend.reset(entry.graph)
        self.graphs.clear()
        self.pool = None
        self.weights = None

    def _mode_reason(self):
        if torch.is_grad_enabled():
            return "autograd is on"
        if _is_compiling():
            return "inside torch.compile"
        if self.backend.capturing():
            return "inside another capture"
        return None

    def _device_reason(self, tensors):
        if not tensors:
            return "no tensor input"
        device = tensors[0].device
        if device.type != self.backend.device_type:
            return f"inputs on {device.type}"
        if any(t.device != device for t in tensors):
            return "inputs on several devices"
        return None

    def eager(self, reason, forward, inputs):
        """forward(inputs) eager, counted (and logged once) under its reason."""
        key = "eager: " + reason
        if key not in self.counts:
            log.info("CUDA graphs: running eager (%s)", reason)
        self.counts[key] += 1
        return forward(inputs)

    def _capture(self, signature, forward, inputs, tensors):
        static = [torch.empty_like(t) for t in tensors]
        for s, t in zip(static, tensors):
            s.copy_(t)
        static_inputs = rebuild(inputs, iter(static))
        device = tensors[0].device
        out = self.backend.warmup(lambda: forward(static_inputs), device)  # this call's result, computed eager
        try:
            output_tensors(out)
        except Unsupported as error:
            self.graphs[signature] = reason = f"{error} as the output"
            self.counts["eager: " + reason] += 1
            return out
        out = clone_output(out)  # it may alias the static inputs, which the next replay overwrites
        pool = self.pool if self.pool is not None else self.backend.new_pool(device)
        try:
            graph, static_out = self.backend.capture(lambda: forward(static_inputs), pool, device)
        except Exception as error:  # a host sync, a CPU tensor, an unsupported op: this signature stays eager
            reason = f"capture failed: {type(error).__name__}: {error}"[:300]
            log.warning("CUDA graphs: %s; that input shape runs eager", reason)
            self.graphs[signature] = reason
            return out
        self.pool = pool
        self.graphs[signature] = _Graph(graph, static, static_out)
        self.counts["capture"] += 1
        return out


class CudaBackend:
    """torch.cuda's capture: warm-up and capture on one side stream per device (the stream's cuBLAS workspace and
    lazy kernel set-up exist before the capture), the graphs of a runner in one memory pool (a replay's
    temporaries are free again once it ends; every output is cloned before the next replay)."""
    device_type = "cuda"

    def __init__(self):
        self.streams = {}

    def stream(self, device):
        if device not in self.streams:
            self.streams[device] = torch.cuda.Stream(device)
        return self.streams[device]

    def capturing(self):
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()

    def new_pool(self, device):
        with torch.cuda.device(device):
            return torch.cuda.graph_pool_handle()

    def warmup(self, fn, device):
        side, current = self.stream(device), torch.cuda.current_stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = fn()
        current.wait_stream(side)
        tensors = []
        try:
            flatten(out, tensors)
        except Unsupported:
            pass
        for t in tensors:
            if t.device.type == "cuda":
                t.record_stream(current)
        return out

    def capture(self, fn, pool, device):
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads may use the GPU meanwhile (only this thread's unsafe calls break a capture)
        with torch.cuda.graph(graph, pool=pool, stream=self.stream(device), capture_error_mode="thread_local"):
            out = fn()
        return graph, out

    def reset(self, graph):
        graph.reset()
