"""linear_attention: every backend against the per-token fp32 recurrence, outputs and gradients (q, k, v,
initial_state, and through the final state), at awkward shapes, with and without decay, causal and not, packed
sequences, NaN-poisoned empties, low precision, and clear errors."""

import pytest
import torch

from seqzoo.kernels import linear_attention
from seqzoo.kernels.linear_attention.reference import linear_attention_reference
from seqzoo.kernels.testing import assert_all_close, forward_backward

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
DECAY = [-0.05, -0.7, 0.0]  # log λ per head: slow, fast, none


def _inputs(B, T, H, K, V, N, dtype, device, scale_qk=0.5):
    return {
        "q": (scale_qk * torch.randn(B, T, H, K, device=device)).to(dtype),
        "k": (scale_qk * torch.randn(B, T, H, K, device=device)).to(dtype),
        "v": torch.randn(B, T, H, V, device=device).to(dtype),
        "initial_state": torch.randn(N, H, K, V, device=device),
    }


def _grads_out(o_shape, s_shape, device):
    return [torch.randn(o_shape, device=device), torch.randn(s_shape, device=device)]


def _reference(inputs, gos, **kw):
    """Ground truth: the fp32 recurrence on fp32 copies of the inputs."""
    ref_in = {k: v.float() for k, v in inputs.items()}
    return forward_backward(linear_attention_reference, ref_in, [g.float() for g in gos], **kw)


def _backend_device(backend, device, triton_device):
    return triton_device if backend == "triton" else device


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("T,K,V", [(1, 16, 16), (63, 60, 40), (100, 32, 64)])
@pytest.mark.parametrize("decay", [False, True])
def test_matches_reference(backend, T, K, V, decay, device, triton_device, nan_empty):
    dev = _backend_device(backend, device, triton_device)
    B, H = 2, 3
    inputs = _inputs(B, T, H, K, V, B, torch.float32, dev)
    gos = _grads_out((B, T, H, V), (B, H, K, V), dev)
    kw = dict(decay=torch.tensor(DECAY, device=dev) if decay else None, output_final_state=True)
    out, grads = forward_backward(linear_attention, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} T={T} K={K} V={V} decay={decay}", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_scale_and_no_initial_state(backend, device, triton_device, nan_empty):
    dev = _backend_device(backend, device, triton_device)
    inputs = _inputs(1, 70, 2, 24, 24, 1, torch.float32, dev)
    del inputs["initial_state"]
    gos = _grads_out((1, 70, 2, 24), (1, 2, 24, 24), dev)
    kw = dict(scale=0.3, decay=torch.tensor([-0.2, -0.01], device=dev), output_final_state=True)
    out, grads = forward_backward(linear_attention, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} scale", out, ref_out, grads, ref_grads, 1e-5)
    # without output_final_state, no state comes back
    assert linear_attention(**inputs, backend=backend)[1] is None


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_non_causal(backend, device, triton_device, nan_empty):
    dev = _backend_device(backend, device, triton_device)
    B, T, H, K, V = 2, 37, 2, 20, 12
    inputs = _inputs(B, T, H, K, V, B, torch.float32, dev)
    gos = _grads_out((B, T, H, V), (B, H, K, V), dev)
    kw = dict(causal=False, output_final_state=True)
    out, grads = forward_backward(linear_attention, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} non-causal", out, ref_out, grads, ref_grads, 1e-5)
    # every query reads the same state: the last causal output equals the non-causal one at the last step
    causal_o, _ = linear_attention_reference(inputs["q"], inputs["k"], inputs["v"],
                                             initial_state=inputs["initial_state"])
    assert torch.allclose(out[0][:, -1], causal_o[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_equals_separate_sequences(backend, causal, device, triton_device, nan_empty):
    dev = _backend_device(backend, device, triton_device)
    lens = [5, 0, 65, 30]  # an empty sequence, one crossing a chunk boundary
    cu = torch.tensor([0, 5, 5, 70, 100], dtype=torch.int32, device=dev)
    H, K, V, N, T = 2, 20, 16, len(lens), sum(lens)
    inputs = _inputs(1, T, H, K, V, N, torch.float32, dev)
    gos = _grads_out((1, T, H, V), (N, H, K, V), dev)
    decay = torch.tensor([-0.1, -0.3], device=dev) if causal else None
    kw = dict(decay=decay, causal=causal, output_final_state=True)
    out, grads = forward_backward(linear_attention, inputs, gos, backend=backend, cu_seqlens=cu, **kw)
    # the same backend, one sequence at a time
    outs, finals, seq_grads = [], [], {k: [] for k in inputs}
    for n in range(N):
        s, e = int(cu[n]), int(cu[n + 1])
        if e == s:
            outs.append(out[0][:, s:e])
            finals.append(inputs["initial_state"][n:n + 1])
            for k in ("q", "k", "v"):
                seq_grads[k].append(grads[k][:, s:e])
            seq_grads["initial_state"].append(gos[1][n:n + 1])  # an empty sequence passes its state through
            continue
        one = {"q": inputs["q"][:, s:e], "k": inputs["k"][:, s:e], "v": inputs["v"][:, s:e],
               "initial_state": inputs["initial_state"][n:n + 1]}
        o_n, g_n = forward_backward(linear_attention, one, [gos[0][:, s:e], gos[1][n:n + 1]], backend=backend, **kw)
        outs.append(o_n[0])
        finals.append(o_n[1])
        for k in g_n:
            seq_grads[k].append(g_n[k])
    expected_out = [torch.cat(outs, 1), torch.cat(finals, 0)]
    expected_grads = {k: torch.cat(v, 1 if k in ("q", "k", "v") else 0) for k, v in seq_grads.items()}
    assert_all_close(f"{backend} varlen vs separate", out, expected_out, grads, expected_grads, 1e-5)
    ref_out, ref_grads = _reference(inputs, gos, cu_seqlens=cu, **kw)
    assert_all_close(f"{backend} varlen vs reference", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype, device, triton_device, nan_empty):
    dev = _backend_device(backend, device, triton_device)
    B, T, H, K, V = 1, 80, 2, 32, 48
    inputs = _inputs(B, T, H, K, V, B, dtype, dev, scale_qk=0.3)
    gos = _grads_out((B, T, H, V), (B, H, K, V), dev)
    kw = dict(decay=torch.tensor([-0.1, -0.02], device=dev), output_final_state=True)
    out, grads = forward_backward(linear_attention, inputs, gos, backend=backend, **kw)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} {dtype}", out, ref_out, grads, ref_grads, TOL[dtype], 2 * TOL[dtype])


@pytest.mark.triton
@pytest.mark.parametrize("T,decay,cu,V", [(1, True, None, 40), (20, False, None, 40), (30, True, [0, 7, 7, 30], 200)])
def test_recurrent_kernel(T, decay, cu, V, triton_device, nan_empty):
    """The recurrent (decode) kernels directly, forward and backward, against the reference."""
    from seqzoo.kernels.linear_attention.triton_recurrent import linear_attention_recurrent_autograd

    dev = triton_device
    B = 2 if cu is None else 1
    N = B if cu is None else len(cu) - 1
    H, K = 2, 60
    x = _inputs(B, T, H, K, V, N, torch.float32, dev)
    g = torch.tensor([-0.3, -0.05], device=dev) if decay else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=dev)
    gos = _grads_out((B, T, H, V), (N, H, K, V), dev)

    def recurrent(q, k, v, initial_state):
        return linear_attention_recurrent_autograd(q, k, v, g, 0.5, initial_state, True, cu_t)

    out, grads = forward_backward(recurrent, x, gos)
    kw = dict(decay=g, scale=0.5, output_final_state=True, cu_seqlens=cu_t)
    ref_out, ref_grads = _reference(x, gos, **kw)
    assert_all_close("recurrent", out, ref_out, grads, ref_grads, 1e-5)
    # the public function takes the forward kernel for short inputs without autograd
    with torch.no_grad():
        o2, ht2 = linear_attention(x["q"], x["k"], x["v"], initial_state=x["initial_state"], backend="triton", **kw)
    assert_all_close("recurrent via public fn", [o2, ht2], ref_out, {}, {}, 1e-5)


def test_chunked_prefix_then_steps_equals_full(device):
    """Generation pattern: state after a prefix, then one token at a time, equals one full call."""
    B, T, H, K, V = 1, 70, 2, 16, 16
    x = _inputs(B, T, H, K, V, B, torch.float32, device)
    decay = torch.tensor([-0.1, -0.5], device=device)
    full, _ = linear_attention(x["q"], x["k"], x["v"], decay=decay, backend="torch")
    o, S = linear_attention(x["q"][:, :65], x["k"][:, :65], x["v"][:, :65], decay=decay, output_final_state=True,
                            backend="torch")
    steps = [o]
    for t in range(65, T):
        o_t, S = linear_attention(x["q"][:, t:t + 1], x["k"][:, t:t + 1], x["v"][:, t:t + 1], decay=decay,
                                  initial_state=S, output_final_state=True, backend="torch")
        steps.append(o_t)
    assert torch.allclose(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_argument():
    q = torch.randn(2, 8, 2, 16)
    v = torch.randn(2, 8, 2, 12)
    with pytest.raises(ValueError, match=r"linear_attention: q must have 4 dims"):
        linear_attention(q[0], q[0], v[0])
    with pytest.raises(ValueError, match=r"linear_attention: k has shape \[2, 8, 2, 15\]"):
        linear_attention(q, q[..., :15], v)
    with pytest.raises(ValueError, match=r"linear_attention: v has shape \[2, 7, 2, 12\]"):
        linear_attention(q, q, v[:, :7])
    with pytest.raises(TypeError, match=r"linear_attention: k has dtype torch.float16"):
        linear_attention(q, q.half(), v)
    with pytest.raises(TypeError, match=r"q has dtype torch.int64"):
        linear_attention(q.long(), q.long(), v.long())
    with pytest.raises(ValueError, match=r"decay has shape \[3\], expected \[2\]"):
        linear_attention(q, q, v, decay=torch.zeros(3))
    with pytest.raises(ValueError, match=r"decay is only defined for causal=True"):
        linear_attention(q, q, v, decay=torch.zeros(2), causal=False)
    with pytest.raises(ValueError, match=r"initial_state has shape \[2, 2, 12, 16\], expected \[2, 2, 16, 12\]"):
        linear_attention(q, q, v, initial_state=torch.zeros(2, 2, 12, 16))
    with pytest.raises(ValueError, match=r"cu_seqlens .*batch size 1"):
        linear_attention(q, q, v, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match=r"initial_state has shape \[1, 2, 16, 12\], expected \[2, 2, 16, 12\]"):
        linear_attention(q[:1], q[:1], v[:1], cu_seqlens=torch.tensor([0, 3, 8]), initial_state=torch.zeros(1, 2, 16, 12))
    with pytest.raises(ValueError, match=r"at least one token"):
        linear_attention(q[:, :0], q[:, :0], v[:, :0])
    with pytest.raises(TypeError, match=r"scale must be a finite float"):
        linear_attention(q, q, v, scale="1")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        linear_attention(q, q, v, backend="cuda")


@pytest.mark.triton
def test_triton_head_dim_limit(triton_device):
    q = torch.randn(1, 4, 1, 300, device=triton_device)
    with pytest.raises(ValueError, match=r"head dims up to 256, got K=300"):
        linear_attention(q, q, torch.randn(1, 4, 1, 8, device=triton_device), backend="triton")
