"""The 8-bit attention's torch reference (quant/attention.py) against float64 attention, block by block and as a
whole: codes within half a step, per-block scales, the key smoothing and what it buys, the chunking, the CPU
dispatch. The Triton kernel is held to this reference in tests/test_quant_attention_kernels.py."""
import pytest
import torch
import torch.nn.functional as F

from comfyui_qsched.quant import attention


def gaussian(*shape, seed, offset=0.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) + offset).to(dtype)


def exact(q, k, v, scale=None):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("tokens, block", [(300, 128), (64, 64), (5, 64), (129, 128)])
def test_block_codes_are_within_half_a_step_of_the_values(tokens, block):
    x = gaussian(2, 3, tokens, 32, seed=tokens) * torch.logspace(-3, 1, tokens)[:, None]  # blocks of unequal range
    codes, scales = attention.quantize_blocks(x, block, multiplier=0.3)
    values = x * 0.3
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    assert scales.shape == (2, 3, -(-tokens // block))
    for index in range(scales.shape[-1]):
        rows = slice(index * block, (index + 1) * block)
        amax = values[:, :, rows].abs().amax(dim=(-1, -2))
        torch.testing.assert_close(scales[..., index], amax / 127, rtol=1e-6, atol=0)
        dequantized = codes[:, :, rows].float() * scales[..., index, None, None]
        assert (dequantized - values[:, :, rows]).abs().le(scales[..., index, None, None] * 0.5 + 1e-7).all()
        assert codes[:, :, rows].abs().amax(dim=(-1, -2)).eq(127).all()  # each block spends the full range


def test_block_of_zeros_gets_zero_codes_and_no_nan():
    x = torch.zeros(1, 1, 70, 16)
    codes, scales = attention.quantize_blocks(x, 64)
    assert not codes.any() and torch.isfinite(scales).all()


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("sharpness, bound", [(1.0, 0.02), (3.0, 0.04)])
def test_reference_is_close_to_float64_attention(head_dim, sharpness, bound):
    q = gaussian(2, 3, 300, head_dim, seed=1) * sharpness
    k, v = gaussian(2, 3, 260, head_dim, seed=2), gaussian(2, 3, 260, head_dim, seed=3)
    out = attention.reference(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel(out, exact(q, k, v)) < bound


def test_smoothing_removes_a_common_key_offset():
    """Keys sharing a large offset (as DiT keys do per channel): subtracting the mean over tokens leaves the
    output as without the offset, while quantizing the raw keys spends the int8 range on the offset."""
    q, k, v = gaussian(1, 2, 256, 64, seed=4) * 3, gaussian(1, 2, 192, 64, seed=5), gaussian(1, 2, 192, 64, seed=6)
    offset = gaussian(1, 1, 1, 64, seed=7) * 20
    shifted = attention.reference(q, k + offset, v)
    assert rel(shifted, attention.reference(q, k, v)) < 1e-3
    q_codes, q_scales = attention.quantize_blocks(q, attention.BLOCK_Q, 64 ** -0.5)
    k_codes, k_scales = attention.quantize_blocks(k + offset, attention.BLOCK_K)  # no smoothing
    scores = (q_codes.float() @ k_codes.float().transpose(-1, -2)) \
        * q_scales.repeat_interleave(attention.BLOCK_Q, -1)[..., :256, None] \
        * k_scales.repeat_interleave(attention.BLOCK_K, -1)[..., None, :192]
    raw = torch.softmax(scores, dim=-1) @ v
    reference = exact(q, k + offset, v)
    assert rel(shifted, reference) < 0.04 < rel(raw, reference)


@pytest.mark.parametrize("dtype, bound", [(torch.float16, 0.02), (torch.bfloat16, 0.025)])
def test_half_precision_inputs_keep_their_dtype(dtype, bound):
    q, k, v = (gaussian(1, 2, 200, 64, seed=s, dtype=dtype) for s in (8, 9, 10))
    out = attention.int8_attention(q, k, v)
    assert out.dtype == dtype and rel(out, exact(q, k, v)) < bound


def test_scale_argument_is_the_softmax_scale():
    q, k, v = (gaussian(1, 1, 130, 32, seed=s) for s in (11, 12, 13))
    assert rel(attention.reference(q, k, v, scale=0.5), exact(q, k, v, scale=0.5)) < 0.03
    assert rel(attention.reference(q, k, v, scale=0.5), attention.reference(q, k, v)) > 0.1


def test_query_chunks_do_not_change_the_result(monkeypatch):
    q, k, v = (gaussian(1, 2, 300, 32, seed=s) for s in (14, 15, 16))
    whole = attention.reference(q, k, v)
    monkeypatch.setattr(attention, "REFERENCE_QUERY_CHUNK", 128)
    assert torch.equal(attention.reference(q, k, v), whole)


def test_the_cpu_runs_the_reference():
    q, k, v = (gaussian(1, 2, 100, 64, seed=s, dtype=torch.bfloat16) for s in (17, 18, 19))
    assert not attention.kernel_supports(q, k, v)
    assert torch.equal(attention.int8_attention(q, k, v), attention.reference(q, k, v))
