"""The int8 backend (torch._int_mm, per-token int8 activations, per-channel weights) and the custom ops of the
8-bit linears, on the CPU: the same integer arithmetic the GPU runs (the Triton kernels are checked bit for bit
against these torch definitions in tests/test_quant_kernels.py and on the GPU by bench/gpu_session.sh)."""
import pytest
import torch
from torch import nn

from comfyui_qsched.quant import BackendError, int8, linear_ops, numerics, quantize_module
from comfyui_qsched.quant.registry import get_backend


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 120), nn.Linear(120, 36, bias=False),
                         nn.Linear(36, 10)).requires_grad_(False)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def float_reference(layer, x):
    """float64: the layer's own dequantized weight on the per-token int8 fake-quantized input."""
    xq = numerics.fake_quantize_activation(x.double(), 8)
    weight = numerics.dequantize_weight(layer.codes(), layer.weight_scale, torch.float64)
    bias = None if layer.bias is None else layer.bias.double()
    return nn.functional.linear(xq, weight, bias)


@pytest.mark.parametrize("spec", ["W8A8", "W4A8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_layers_compute_the_quantized_product(spec, dtype):
    model, simulated = net(), net()
    report = quantize_module(model, spec, backend="int8", policy="first_last=off")
    quantize_module(simulated, spec, backend="simulate", policy="first_last=off")
    # 120 -> 36 and 36 -> 10: sizes that are not multiples of 8 (_int_mm's rule) compute in 16 bit
    assert report.by_backend() == {"int8": 2, "weight-only (linear fallback)": 2}
    assert isinstance(model[2], int8.Int8Linear) and not isinstance(model[3], int8.Int8Linear)
    for index in range(0, 5, 2):  # the stored codes and scales are simulate's: caches, LoRA and export are shared
        assert torch.equal(model[index].weight, simulated[index].weight)
        assert torch.equal(model[index].weight_scale, simulated[index].weight_scale)
    model, simulated = model.to(dtype), simulated.to(dtype)
    x = torch.randn(3, 7, 64).to(dtype)
    hidden = model[1](model[0](x))
    out = model[2](hidden)
    assert out.dtype == dtype and out.shape == (3, 7, 120)
    # exact int32 accumulation, one rounding to dtype: within that dtype's rounding of the float64 product
    assert rel(out, float_reference(model[2], hidden)) < (4e-3 if dtype == torch.bfloat16 else 1e-5)
    # and simulate's float product of the same codes (its activation codes divide by the scale, ours multiply by
    # its inverse: rarely one code apart)
    assert rel(out, simulated[2](hidden)) < (8e-3 if dtype == torch.bfloat16 else 1e-4)


def test_int8_activation_codes_are_the_per_token_quantization():
    x = torch.randn(5, 40) * torch.logspace(-3, 2, 5)[:, None]
    x[2] = 0
    codes, scale = int8.quantize_rows(x, 8)
    assert codes.dtype == torch.int8 and codes.shape == (8, 40) and scale.shape == (8, 1)
    assert torch.count_nonzero(codes[5:]) == 0 and int(codes.abs().amax(dim=1)[[0, 1, 3, 4]].min()) == 127
    assert torch.allclose(codes[:5].float() * scale[:5], numerics.fake_quantize_activation(x, 8), rtol=0, atol=1e-6)


def test_int8_rows_are_padded_for_cuda_only():
    assert [int8.padded_rows(n, "cuda") for n in (1, 16, 17, 33, 4352)] == [32, 32, 32, 48, 4352]
    assert int8.padded_rows(5, "cpu") == 5


def test_int8_backend_refuses_what_it_cannot_run():
    for spec in ("W4A4", "W8A8-g48", "W8A8-tensor", "W6A8"):  # W8A8-g64: the Triton GEMM (test_quant_gemm.py)
        with pytest.raises(BackendError, match="the int8 backend does W8A8 and W4A8"):
            quantize_module(net(), spec, backend="int8")
    assert get_backend("int8").layout(nn.Linear(64, 32), numerics_spec("W4A8")) == (torch.uint8, (32, 32), (32, 1))


def numerics_spec(text):
    from comfyui_qsched.quant import QuantSpec
    return QuantSpec.parse(text)


@pytest.mark.parametrize("through_op", [False, True])
def test_8bit_linears_compile_to_one_graph_with_the_eager_result(monkeypatch, through_op):
    """torch.compile(fullgraph=True) takes the layers as they are: the custom ops (opaque) or the torch
    definitions (traced); both give what eager gives."""
    monkeypatch.setattr(linear_ops, "COMPILE_THROUGH_OP", through_op)
    model = net()
    quantize_module(model, "W8A8", backend="int8", policy="first_last=off")
    x = torch.randn(6, 64)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert rel(compiled(x), eager) < 1e-6
    torch._dynamo.reset()


def test_custom_ops_take_eager_calls_and_have_fake_shapes(monkeypatch):
    model = net()
    quantize_module(model, "W4A8", backend="int8", policy="first_last=off")
    layer, x = model[2], torch.randn(2, 3, 256)
    direct = layer(x)
    monkeypatch.setattr(linear_ops, "EAGER_THROUGH_OP", True)
    assert torch.equal(layer(x), direct)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = linear_ops.INT8_OP(mode.from_tensor(x), mode.from_tensor(layer.weight),
                                  mode.from_tensor(layer.weight_scale), None, 120, True)
    assert fake.shape == (2, 3, 120) and fake.dtype == x.dtype


@pytest.mark.parametrize("backend", ["int8", "fp8"])
def test_layers_with_a_branch_compile_to_one_graph(backend):
    """Under torch.compile the branch's up-projection is one addmm into the 8-bit output: the eager result."""
    model = net()
    quantize_module(model, "W8A8-r8", backend=backend, policy="first_last=off")
    assert model[2].quant_spec.rank == 8
    x = torch.randn(6, 64)
    eager = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert rel(compiled(x), eager) < 1e-5
    torch._dynamo.reset()
