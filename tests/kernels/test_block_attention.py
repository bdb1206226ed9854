"""block_attention: every backend against the block-by-block fp32 reference, outputs and gradients, for
softmax and ReLU, causal and not, block sizes that do and do not divide T, packed sequences, NaN-poisoned
empties, low precision and clear errors."""

import pytest
import torch

from seqzoo.kernels import block_attention
from seqzoo.kernels.block_attention.reference import block_attention_reference
from seqzoo.kernels.testing import assert_all_close, forward_backward

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


def _inputs(B, T, H, D, DV, dtype, device):
    return {
        "q": torch.randn(B, T, H, D, device=device).to(dtype),
        "k": torch.randn(B, T, H, D, device=device).to(dtype),
        "v": torch.randn(B, T, H, DV, device=device).to(dtype),
    }


def _reference(inputs, go, **kw):
    return forward_backward(block_attention_reference, {k: v.float() for k, v in inputs.items()}, [go.float()], **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,D,DV,w", [(1, 16, 16, 64), (63, 60, 40, 16), (100, 32, 32, 64), (100, 20, 24, 24),
                                     (100, 72, 130, 64)])  # D > 64: the backward runs 32-row tiles
@pytest.mark.parametrize("activation", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_reference(backend, T, D, DV, w, activation, causal, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    B, H = 2, 2
    inputs = _inputs(B, T, H, D, DV, torch.float32, dev)
    go = torch.randn(B, T, H, DV, device=dev)
    kw = dict(block_size=w, causal=causal, activation=activation)
    out, grads = forward_backward(block_attention, inputs, [go], backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, go, **kw)
    assert_all_close(f"{backend} T={T} w={w} {activation} causal={causal}", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.triton
def test_varlen_large_head_dim_backward_tiles(triton_device, nan_empty):
    """Packed sequences with D > 64, where the backward uses its own (32-row) tile table."""
    cu = torch.tensor([0, 37, 37, 150], dtype=torch.int32)
    inputs = _inputs(1, 150, 2, 80, 72, torch.float32, triton_device)
    go = torch.randn(1, 150, 2, 72, device=triton_device)
    kw = dict(block_size=48, causal=True, activation="softmax")
    out, grads = forward_backward(block_attention, inputs, [go], backend="triton", cu_seqlens=cu.to(triton_device),
                                  cu_seqlens_cpu=cu, **kw)
    ref_out, ref_grads = _reference(inputs, go, cu_seqlens=cu, **kw)
    assert_all_close("varlen D=80", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_scale(backend, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    inputs = _inputs(1, 40, 2, 32, 32, torch.float32, dev)
    go = torch.randn(1, 40, 2, 32, device=dev)
    kw = dict(block_size=16, scale=0.05)
    out, grads = forward_backward(block_attention, inputs, [go], backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, go, **kw)
    assert_all_close(f"{backend} scale", out, ref_out, grads, ref_grads, 1e-5)


def test_blocks_do_not_see_each_other(device):
    """Changing a token of block 0 leaves every output of block 1 unchanged (and changes block 0's)."""
    x = _inputs(1, 40, 1, 16, 16, torch.float32, device)
    o1 = block_attention(**x, block_size=16, causal=False, backend="torch")
    x["k"][0, 3] += 1.0
    x["v"][0, 3] += 1.0
    o2 = block_attention(**x, block_size=16, causal=False, backend="torch")
    assert torch.equal(o1[:, 16:], o2[:, 16:])
    assert not torch.allclose(o1[:, :16], o2[:, :16])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["softmax", "relu"])
def test_varlen_equals_separate_sequences(backend, activation, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    cu = torch.tensor([0, 5, 5, 70, 100], dtype=torch.int32, device=dev)  # includes an empty sequence
    T, H, D, DV = 100, 2, 24, 16
    inputs = _inputs(1, T, H, D, DV, torch.float32, dev)
    go = torch.randn(1, T, H, DV, device=dev)
    kw = dict(block_size=16, activation=activation)
    out, grads = forward_backward(block_attention, inputs, [go], backend=backend, cu_seqlens=cu, **kw)
    outs, seq_grads = [], {k: [] for k in inputs}
    for n in range(cu.numel() - 1):
        s, e = int(cu[n]), int(cu[n + 1])
        if e == s:
            continue
        one = {k: v[:, s:e] for k, v in inputs.items()}
        o_n, g_n = forward_backward(block_attention, one, [go[:, s:e]], backend=backend, **kw)
        outs.append(o_n[0])
        for k in g_n:
            seq_grads[k].append(g_n[k])
    assert_all_close(f"{backend} varlen vs separate", out, [torch.cat(outs, 1)],
                     grads, {k: torch.cat(v, 1) for k, v in seq_grads.items()}, 1e-5)
    ref_out, ref_grads = _reference(inputs, go, cu_seqlens=cu, **kw)
    assert_all_close(f"{backend} varlen vs reference", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["softmax", "relu"])
def test_low_precision(backend, dtype, activation, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    inputs = _inputs(1, 72, 2, 64, 48, dtype, dev)
    go = torch.randn(1, 72, 2, 48, device=dev)
    kw = dict(block_size=32, activation=activation)
    out, grads = forward_backward(block_attention, inputs, [go], backend=backend, **kw)
    assert out[0].dtype == dtype
    ref_out, ref_grads = _reference(inputs, go, **kw)
    assert_all_close(f"{backend} {dtype} {activation}", out, ref_out, grads, ref_grads, TOL[dtype], 2 * TOL[dtype])


def test_bad_inputs_name_the_argument():
    q = torch.randn(2, 8, 2, 16)
    v = torch.randn(2, 8, 2, 12)
    with pytest.raises(ValueError, match=r"block_attention: q must have 4 dims"):
        block_attention(q[0], q[0], v[0])
    with pytest.raises(ValueError, match=r"block_attention: k has shape \[2, 8, 2, 15\]"):
        block_attention(q, q[..., :15], v)
    with pytest.raises(ValueError, match=r"block_attention: v has shape \[2, 7, 2, 12\]"):
        block_attention(q, q, v[:, :7])
    with pytest.raises(TypeError, match=r"block_attention: v has dtype torch.float16"):
        block_attention(q, q, v.half())
    with pytest.raises(ValueError, match=r"block_size must be a positive int, got 0"):
        block_attention(q, q, v, block_size=0)
    with pytest.raises(ValueError, match=r"block_size must be a positive int, got 16.0"):
        block_attention(q, q, v, block_size=16.0)
    with pytest.raises(ValueError, match=r"activation must be one of \('softmax', 'relu'\), got 'gelu'"):
        block_attention(q, q, v, activation="gelu")
    with pytest.raises(ValueError, match=r"cu_seqlens .*batch size 1"):
        block_attention(q, q, v, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(TypeError, match=r"scale must be None or a finite float"):
        block_attention(q, q, v, scale=float("nan"))
    with pytest.raises(ValueError, match=r"at least one token"):
        block_attention(q[:, :0], q[:, :0], v[:, :0])


@pytest.mark.triton
def test_triton_head_dim_limit(triton_device):
    q = torch.randn(1, 4, 1, 300, device=triton_device)
    with pytest.raises(ValueError, match=r"head dims up to 256, got D=300"):
        block_attention(q, q, torch.randn(1, 4, 1, 8, device=triton_device), backend="triton")


def test_linear_and_block_kernels_compile_for_hopper():
    """Without a GPU: compile the linear_attention and block_attention kernels for sm_90 (H100/H200) with the
    real launch's specialization, every autotune config at bf16 D=128: no compile error, no spill."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "compile_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for op in ("linear_attention", "block_attention"):
        res = subprocess.run([sys.executable, script, op, "bf16", "128", "--all-configs", "--no-spills"],
                             capture_output=True, text=True, env=env, timeout=900)
        assert res.returncode == 0 and "failed 0" in res.stdout, res.stdout[-4000:] + res.stderr[-4000:]
