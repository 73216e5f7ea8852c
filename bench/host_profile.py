"""Host time of an eager step beside its GPU time (bench/peers.py --host-profile).

An eager step is bound by the host when the CPU takes longer to issue the kernels than the GPU takes to run them.
Measured here, per config:
- host_ms: CPU time to issue one step, the sum over the model's blocks (every ModuleList item and every other
  direct child) of the time from the block's forward entry to its return, each block started on an idle GPU (a
  synchronize before it, not counted), so that no launch waits for a full launch queue; plus the model's own code
  between the blocks ("glue": the forward's wall time less the blocks and the waits).
- gpu_ms: the sum of the step's kernel times (torch.profiler, device time).
- per layer: host microseconds per Linear call (forward entry to return, i.e. to its last launch), by layer
  class, from a second forward with hooks on every Linear (the hooks' own cost is outside the timed span).
- pieces: host microseconds of the single calls a quantized linear is made of (a Triton launch, a cuBLAS GEMM,
  an allocation), each on an idle GPU, median of many calls.
- calls: what one forward asks of the CUDA runtime and driver (torch.profiler): count and host time of each API
  (kernel launches, allocations, copies, and any synchronization, which makes the host wait for the GPU and would
  show up as host time), the operators with the most host time of their own; layer_calls: the same per call of one
  layer of each Linear class, called alone on the input it saw in the step; launcher: whether the Triton kernels
  launched through their compiled launcher (quant/kernels/triton_kernels.Launcher) or fell back to Triton's own.
Host time over GPU time > 1 means the eager step runs at the host's speed, whatever the GPU."""
import statistics
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def blocks(model):
    """(name, module) of the units the step is cut into: ModuleList / Sequential items, other direct children."""
    for name, child in model.named_children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) and len(child):
            yield from ((f"{name}.{index}", item) for index, item in enumerate(child))
        else:
            yield name, child


def host_step(model, batch, device, repeats=3):
    """{'host_ms', 'glue_ms', 'blocks'}: median over `repeats` instrumented forwards."""
    runs = []
    state = {}

    def before(_module, _args):
        start = time.perf_counter()
        _sync(device)
        state["wait"] += time.perf_counter() - start
        state["entry"] = time.perf_counter()

    def after(_module, _args, _out):
        state["inside"] += time.perf_counter() - state["entry"]

    units = list(blocks(model))
    handles = [m.register_forward_pre_hook(before) for _, m in units] + \
        [m.register_forward_hook(after) for _, m in units]
    try:
        with torch.inference_mode():
            for index in range(repeats + 1):  # the first forward warms up
                state.update(wait=0.0, inside=0.0)
                _sync(device)
                start = time.perf_counter()
                model(**batch)
                wall = time.perf_counter() - start
                _sync(device)
                if index:
                    runs.append((state["inside"] * 1e3, (wall - state["inside"] - state["wait"]) * 1e3))
    finally:
        for handle in handles:
            handle.remove()
    inside = statistics.median(r[0] for r in runs)
    glue = statistics.median(r[1] for r in runs)
    return {"host_ms": inside + glue, "glue_ms": glue, "blocks": len(units)}


def layer_host(model, batch, device, repeats=3):
    """{layer class: {'calls', 'median_us', 'mean_us', 'total_ms'}} per step, over every nn.Linear call."""
    samples, entry = {}, {}

    def before(module, _args):
        entry[id(module)] = time.perf_counter()

    def after(module, _args, _out):
        samples.setdefault(type(module).__name__, []).append(time.perf_counter() - entry.pop(id(module)))

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    handles = [m.register_forward_pre_hook(before) for m in layers] + [m.register_forward_hook(after) for m in layers]
    try:
        with torch.inference_mode():
            model(**batch)
            _sync(device)
            samples.clear()
            for _ in range(repeats):
                model(**batch)
                _sync(device)
    finally:
        for handle in handles:
            handle.remove()
    return {name: {"calls": len(values) // repeats, "median_us": statistics.median(values) * 1e6,
                   "mean_us": statistics.fmean(values) * 1e6, "total_ms": sum(values) * 1e3 / repeats}
            for name, values in samples.items()}


# The runtime and driver calls that make the host wait for the GPU or for the allocator: none belong in a step.
WAITING_CALLS = ("Synchronize", "cudaMalloc", "cudaFree", "cuMemAlloc", "cuMemFree", "cudaMemcpy", "cuMemcpyDtoH",
                 "cudaEventQuery", "cudaStreamQuery")


def _is_api_call(name):
    """A CUDA runtime (cudaX) or driver (cuX) API event of the profiler's CPU trace."""
    return name.startswith("cuda") or (name.startswith("cu") and name[2:3].isupper())


def launcher_state():
    """{'fast': whether Triton launches still go through their compiled launcher, 'kernels': {kernel: [fast
    specializations, ones that fell back]}}, or None where the Triton kernels are not loaded."""
    from comfyui_qsched.quant import kernels
    if kernels.triton_kernels is None:
        return None
    tk = kernels.triton_kernels
    launchers = {}
    for module in (tk, kernels.gemm_kernels):
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, tk.Launcher):
                compiled = list(value.compiled.values())
                name = getattr(value.kernel, "__name__", None) or getattr(value.kernel.fn, "__name__", "?")
                launchers[name] = [sum(c is not None for c in compiled), sum(c is None for c in compiled)]
    return {"fast": tk.Launcher.fast, "kernels": launchers}


def _activities(device):
    from torch.profiler import ProfilerActivity
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def _summary(prof, calls=1, top=15):
    api, ops = {}, []
    for event in prof.key_averages():
        if _is_api_call(event.key):
            api[event.key] = [event.count / calls, round(event.self_cpu_time_total / calls, 1)]
        elif "::" in event.key:
            ops.append([event.key, event.count / calls, round(event.self_cpu_time_total / calls, 1)])
    ops.sort(key=lambda op: -op[2])
    waits = sorted(name for name in api if any(marker in name for marker in WAITING_CALLS))
    return {"api": api, "waits": waits, "ops": ops[:top]}


def layer_calls(model, batch, device, calls=20):
    """_summary per call of one layer of each Linear class (the one with the largest input in a forward, on that
    input), called again alone `calls` times: what a single quantized layer call asks of the runtime."""
    from torch.profiler import profile
    activities = _activities(device)
    seen = {}

    def keep(module, args, kwargs):
        name = type(module).__name__
        if name not in seen or args[0].numel() > seen[name][1][0].numel():
            seen[name] = (module, args, kwargs)

    handles = [m.register_forward_pre_hook(keep, with_kwargs=True) for m in model.modules()
               if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    with torch.inference_mode():
        for name, (module, args, kwargs) in seen.items():
            module(*args, **kwargs)
            _sync(device)
            with profile(activities=activities) as prof:
                for _ in range(calls):
                    module(*args, **kwargs)
            _sync(device)
            result[name] = {"shape": [list(args[0].shape), module.out_features], **_summary(prof, calls, top=8)}
    seen.clear()
    return result


def forward_calls(model, batch, device, top=15):
    """{'api': {call: [count, host_us]}, 'waits': [calls of WAITING_CALLS], 'ops': [[op, count, self host_us]]} of
    one forward (after one warm-up forward), from torch.profiler: the final synchronize is outside the profile."""
    from torch.profiler import profile
    activities = _activities(device)
    with torch.inference_mode():
        model(**batch)
        _sync(device)
        with profile(activities=activities) as prof:
            model(**batch)
    _sync(device)
    return _summary(prof, top=top)


def profile_config(model, batch, device, kernel_profile):
    """One config's host profile row (kernel_profile: bench/quant_profile.py's, for the GPU time)."""
    row = host_step(model, batch, device)
    row["layers"] = layer_host(model, batch, device)
    row["calls"] = forward_calls(model, batch, device)
    row["layer_calls"] = layer_calls(model, batch, device)
    row["launcher"] = launcher_state()
    row["gpu_ms"] = kernel_profile(model, batch)["total_ms"] if device.type == "cuda" else None
    if row["gpu_ms"]:
        row["host_over_gpu"] = row["host_ms"] / row["gpu_ms"]
    return row


def host_us(fn, device, calls=200):
    """Median host microseconds of one call of `fn` started on an idle GPU (launch cost, not kernel time)."""
    fn()
    values = []
    for _ in range(calls):
        _sync(device)
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    _sync(device)
    return statistics.median(values) * 1e6


def pieces(device, tokens=4352, k=3072, n=3072):
    """Host microseconds of each call a quantized linear makes, and of whole layers, on one FLUX shape."""
    from comfyui_qsched.quant import linear_ops, quantize_module
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    from torch import nn
    x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k ** 0.5
    w8 = w.to(torch.float8_e4m3fn)
    i8 = (w * 100).clamp(-127, 127).to(torch.int8)
    scale = torch.ones(1, n, device=device)
    x8, sx = tk.quantize_rows_fp8(x, tokens)
    xi, si, _ = tk.quantize_act(x, tokens, True)
    acc = torch._int_mm(xi, i8.t())
    result = {
        "torch_empty": host_us(lambda: torch.empty((tokens, k), device=device, dtype=torch.bfloat16), device),
        "bf16_linear": host_us(lambda: nn.functional.linear(x, w), device),
        "triton_fp8_quant": host_us(lambda: tk.quantize_rows_fp8(x, tokens), device),
        "triton_int8_quant": host_us(lambda: tk.quantize_act(x, tokens, True), device),
        "scaled_mm": host_us(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=scale,
                                                      out_dtype=torch.bfloat16, use_fast_accum=True), device),
        "int_mm": host_us(lambda: torch._int_mm(xi, i8.t()), device),
        "triton_int8_epilogue": host_us(lambda: tk.int8_epilogue(acc, si, scale.view(-1, 1), None, tokens,
                                                                 torch.bfloat16), device),
    }
    saved = tk.Launcher.fast
    tk.Launcher.fast = False
    result["triton_fp8_quant_plain_launch"] = host_us(lambda: tk.quantize_rows_fp8(x, tokens), device)
    tk.Launcher.fast = saved
    for spec, backend in (("W8A8", "fp8"), ("W4A8", "fp8"), ("W8A8", "int8"), ("W4A8", "int8")):
        layer = nn.Sequential(nn.Linear(k, n, device=device, dtype=torch.bfloat16))
        quantize_module(layer, spec, backend=backend, policy="first_last=off")
        for through_op in (False, True):
            linear_ops.EAGER_THROUGH_OP = through_op
            try:
                name = f"layer_{spec}_{backend}{'_op' if through_op else ''}"
                result[name] = host_us(lambda layer=layer: layer(x), device)
            finally:
                linear_ops.EAGER_THROUGH_OP = False
    return result
