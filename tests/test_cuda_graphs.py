"""quant/cuda_graphs.py's decisions on the CPU: when a call is captured, replayed or run eager, and when the graphs
are released. The capture primitive is the runner's backend; here `ReplayingBackend` stands in for torch.cuda on
the CPU: its "graph" re-runs the captured function on the captured (static) input buffers and writes into the
captured output buffers, as a CUDA graph replay does. So a replay here is right only if the runner copied the new
inputs into the buffers the capture saw and hands back the output buffers' values. The bit-for-bit check of real
CUDA graphs against eager is tests/gpu/test_cuda_graphs_gpu.py."""
import pytest
import torch
from torch import nn

from comfyui_qsched.quant.cuda_graphs import GraphRunner, WeightState, flatten


class ReplayingGraph:
    def __init__(self, fn, output):
        self.fn, self.output, self.live = fn, output, True

    def replay(self):
        assert self.live, "a released graph was replayed"
        tensors, fresh = [], []
        flatten(self.output, tensors)
        flatten(self.fn(), fresh)
        for old, new in zip(tensors, fresh):
            old.copy_(new)


class ReplayingBackend:
    def __init__(self, fail_capture=False, device_type="cpu"):
        self.fail_capture, self.device_type = fail_capture, device_type
        self.inside = False
        self.warmups = self.captures = self.resets = self.pools = 0

    def capturing(self):
        return self.inside

    def new_pool(self, device):
        self.pools += 1
        return object()

    def warmup(self, fn, device):
        self.warmups += 1
        return fn()

    def capture(self, fn, pool, device):
        self.captures += 1
        self.inside = True
        try:
            if self.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")
            out = fn()
        finally:
            self.inside = False
        return ReplayingGraph(fn, out), out

    def reset(self, graph):
        graph.live = False
        self.resets += 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)
        self.register_buffer("shift", torch.randn(4))

    def forward(self, x, t, scale=1.0):
        return self.b(torch.relu(self.a(x) * t[:, None])) * scale + self.shift


def call(net):
    return lambda inputs: net(*inputs[0], **inputs[1])


def run(runner, net, *args, key=(), state=None, **kwargs):
    state = state or WeightState(net)
    with torch.no_grad():
        return runner.run(call(net), (args, kwargs), key=key, weights=lambda: state.key("cpu"))


def eager(net, *args, **kwargs):
    with torch.no_grad():
        return net(*args, **kwargs)


@pytest.fixture
def net():
    return Net()


def inputs(rows, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 8, generator=g), torch.rand(rows, generator=g)


def test_a_known_signature_replays_with_the_new_inputs(net):
    backend = ReplayingBackend()
    runner, state = GraphRunner(backend), WeightState(net)
    first, second, other = inputs(2, 1), inputs(2, 2), inputs(3, 3)
    assert torch.equal(run(runner, net, *first, state=state), eager(net, *first))
    assert (backend.warmups, backend.captures, runner.counts["replay"]) == (1, 1, 0)
    out = run(runner, net, *second, state=state)
    assert runner.counts["replay"] == 1 and backend.captures == 1
    assert torch.equal(out, eager(net, *second))
    # another shape: captured beside the first; both replay afterwards
    assert torch.equal(run(runner, net, *other, state=state), eager(net, *other))
    assert backend.captures == 2 and len(runner.graphs) == 2 and backend.pools == 1  # one pool for the runner
    assert torch.equal(run(runner, net, *first, state=state), eager(net, *first))
    assert torch.equal(run(runner, net, *other, state=state), eager(net, *other))
    assert runner.counts["replay"] == 3 and backend.captures == 2


def test_replay_outputs_are_copies(net):
    """A replay rewrites the captured output buffers: what an earlier call returned must not change."""
    runner, state = GraphRunner(ReplayingBackend()), WeightState(net)
    run(runner, net, *inputs(2, 1), state=state)
    before = run(runner, net, *inputs(2, 2), state=state)
    kept = before.clone()
    run(runner, net, *inputs(2, 3), state=state)
    assert torch.equal(before, kept)


def test_non_tensor_inputs_and_the_callers_key_are_part_of_the_signature(net):
    backend = ReplayingBackend()
    runner, state = GraphRunner(backend), WeightState(net)
    x, t = inputs(2, 1)
    run(runner, net, x, t, scale=1.0, state=state)
    assert torch.equal(run(runner, net, x, t, scale=2.0, state=state), eager(net, x, t, scale=2.0))
    run(runner, net, x, t, scale=2.0, key=("int8",), state=state)
    assert backend.captures == 3 and runner.counts["replay"] == 0
    run(runner, net, x, t.double().float(), scale=2.0, state=state)
    assert runner.counts["replay"] == 1
    # the same values in another layout are another signature (strides decide kernels)
    run(runner, net, x.t().contiguous().t(), t, scale=2.0, state=state)
    assert backend.captures == 4


def test_beyond_max_graphs_runs_eager(net):
    backend = ReplayingBackend()
    runner, state = GraphRunner(backend, max_graphs=2), WeightState(net)
    for rows in (1, 2, 3, 3, 1):
        assert torch.equal(run(runner, net, *inputs(rows, rows), state=state), eager(net, *inputs(rows, rows)))
    assert backend.captures == 2 and runner.counts["eager: more than 2 input signatures"] == 2
    assert runner.counts["replay"] == 1


def test_new_weights_release_the_graphs_and_capture_again(net):
    backend = ReplayingBackend()
    runner, state = GraphRunner(backend), WeightState(net)
    x, t = inputs(2, 1)
    run(runner, net, x, t, state=state)
    graph = runner.graphs[next(iter(runner.graphs))].graph
    # a LoRA merged the way ComfyUI merges one by default: a new tensor in place of the weight
    net.a.weight = nn.Parameter(net.a.weight + 0.5, requires_grad=False)
    out = run(runner, net, x, t, state=state)
    assert torch.equal(out, eager(net, x, t))
    assert not graph.live and backend.resets == 1 and backend.captures == 2 and runner.counts["replay"] == 0
    # an update in place keeps the addresses: the graph replays and reads the new values, as a CUDA graph does
    with torch.no_grad():
        net.b.weight.mul_(2)
        net.shift.add_(1)
    assert torch.equal(run(runner, net, x, t, state=state), eager(net, x, t))
    assert backend.captures == 2 and runner.counts["replay"] == 1


def test_weights_not_resident_run_eager_and_release_the_graphs(net):
    backend = ReplayingBackend()
    runner, state = GraphRunner(backend), WeightState(net, hooks=("weight_function",))
    x, t = inputs(2, 1)
    run(runner, net, x, t, state=state)
    net.a.weight_function = [lambda w: w]   # a per-call weight hook (ComfyUI's low-VRAM LoRA)
    assert torch.equal(run(runner, net, x, t, state=state), eager(net, x, t))
    assert runner.counts["eager: weights not all resident on the device"] == 1
    assert backend.resets == 1 and not runner.graphs
    net.a.weight_function = []
    run(runner, net, x, t, state=state)
    assert backend.captures == 2
    net.register_buffer("unused", torch.zeros(3, device="meta"))   # a tensor elsewhere than the device
    run(runner, net, x, t, state=state)
    assert runner.counts["eager: weights not all resident on the device"] == 2 and backend.resets == 2


def test_modes_that_never_replay(net):
    backend = ReplayingBackend()
    runner, state = GraphRunner(backend), WeightState(net)
    x, t = inputs(2, 1)
    with torch.enable_grad():
        runner.run(call(net), ((x, t), {}), weights=lambda: state.key("cpu"))
    assert runner.counts["eager: autograd is on"] == 1 and backend.warmups == 0
    run(runner, net, x, t, state=state)
    with torch.inference_mode():   # inference tensors cannot be copied into outside it: another signature
        runner.run(call(net), ((x, t), {}), weights=lambda: state.key("cpu"))
    assert backend.captures == 2 and runner.counts["replay"] == 0
    assert GraphRunner(ReplayingBackend()).run(lambda _: 1, ((), {"n": 3})) == 1   # no tensor at all
    cuda_runner = GraphRunner()   # torch.cuda's backend: CPU inputs stay eager
    assert torch.equal(run(cuda_runner, net, x, t, state=state), eager(net, x, t))
    assert cuda_runner.counts == {"eager: inputs on cpu": 1}


def test_inputs_and_outputs_a_graph_cannot_hold(net):
    backend = ReplayingBackend()
    runner = GraphRunner(backend)
    x, t = inputs(2, 1)
    out = runner.run(lambda inputs: net(*inputs[0]) * inputs[1]["f"](), ((x, t), {"f": lambda: 2.0}))
    assert torch.equal(out, eager(net, x, t) * 2.0) and runner.counts["eager: function in the inputs"] == 1
    with torch.no_grad():
        out = runner.run(lambda inputs: (net(*inputs), object()), (x, t))
    assert torch.equal(out[0], eager(net, x, t)) and backend.captures == 0
    assert runner.counts["eager: object as the output"] == 1
    with torch.no_grad():
        runner.run(lambda inputs: (net(*inputs), object()), (x, t))
    assert backend.warmups == 1, "a signature whose output a graph cannot hold is not tried again"
    assert runner.counts["eager: object as the output"] == 2
    runner = GraphRunner(ReplayingBackend())   # one runner per forward: tensors in tuples, lists and dicts are fine
    with torch.no_grad():
        out = runner.run(lambda inputs: {"sample": [net(*inputs)]}, (x, t))
        out = runner.run(lambda inputs: {"sample": [net(*inputs)]}, (x, t))
    assert torch.equal(out["sample"][0], eager(net, x, t)) and runner.counts["replay"] == 1


def test_a_forward_that_cannot_be_captured_stays_eager(net):
    backend = ReplayingBackend(fail_capture=True)
    runner, state = GraphRunner(backend), WeightState(net)
    x, t = inputs(2, 1)
    assert torch.equal(run(runner, net, x, t, state=state), eager(net, x, t))
    assert torch.equal(run(runner, net, *inputs(2, 2), state=state), eager(net, *inputs(2, 2)))
    assert backend.captures == 1 and runner.counts["replay"] == 0
    assert runner.counts["eager: capture failed: RuntimeError: operation not permitted when stream is capturing"] == 1
    run(runner, net, *inputs(3, 3), state=state)   # another signature is tried
    assert backend.captures == 2


def test_release_drops_every_graph(net):
    backend = ReplayingBackend()
    runner, state = GraphRunner(backend), WeightState(net)
    run(runner, net, *inputs(1, 1), state=state)
    run(runner, net, *inputs(2, 2), state=state)
    runner.release()
    assert backend.resets == 2 and not runner.graphs and runner.pool is None
    run(runner, net, *inputs(1, 1), state=state)
    assert backend.captures == 3 and backend.pools == 2


def test_weight_state_sees_every_parameter_and_buffer(net):
    state = WeightState(net)
    key = state.key("cpu")
    addresses = {t.data_ptr() for t in [*net.parameters(), *net.buffers()]}
    assert set(key) == addresses and len(key) == len(addresses)
    assert state.key("cuda") is None
