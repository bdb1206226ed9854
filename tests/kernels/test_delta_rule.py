"""delta_rule: every backend against the per-token fp32 recurrence (reference.py), outputs and gradients of q,
k, v, beta, initial_state and through the final state, at awkward shapes (T = 1, 63, 100; K, V = 16, 60, 100,
130), packed sequences (each equal to running it alone, states included), NaN-poisoned empties, q/k L2 norm,
low precision, the fused recurrent kernel, and clear errors for bad input."""

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import delta_rule
from seqzoo.kernels.delta_rule import fused_recurrent_delta_rule
from seqzoo.kernels.delta_rule.reference import delta_rule_reference
from seqzoo.kernels.testing import assert_all_close, assert_close, forward_backward, rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 1e-2}
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 6e-2, torch.float16: 2e-2}
TRITON = pytest.param("triton", marks=pytest.mark.triton)


def _inputs(B, T, H, K, V, N, dtype, device, h0=True, beta_max=1.0):
    """Keys L2-normalized (the regime the layer runs in); beta in (0, beta_max)."""
    inputs = {
        "q": torch.randn(B, T, H, K, device=device).to(dtype),
        "k": F.normalize(torch.randn(B, T, H, K, device=device), dim=-1).to(dtype),
        "v": torch.randn(B, T, H, V, device=device).to(dtype),
        "beta": (beta_max * torch.rand(B, T, H, device=device)).to(dtype),
    }
    if h0:
        inputs["initial_state"] = torch.randn(N, H, K, V, device=device)
    return inputs


def _grads_out(B, T, H, K, V, N, device):
    return [torch.randn(B, T, H, V, device=device), torch.randn(N, H, K, V, device=device)]


def _reference(inputs, gos, scale=None, **kw):
    """Ground truth: the fp32 recurrence on fp32 copies of the inputs, through the public function."""
    ref_in = {k: v.float() if v is not None else None for k, v in inputs.items()}
    return forward_backward(delta_rule, ref_in, [g.float() if g is not None else None for g in gos], scale=scale, backend="reference", **kw)


def _dev(backend, device, triton_device):
    return triton_device if backend == "triton" else device


# ----------------------------------------------------------------------------------------------
# fp32: every backend == reference, outputs and all gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("T,K,V", [(1, 16, 60), (63, 60, 16), (100, 16, 60), (100, 100, 130)])
def test_matches_reference(backend, T, K, V, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    B, H = 2, 2
    inputs = _inputs(B, T, H, K, V, B, torch.float32, dev)
    gos = _grads_out(B, T, H, K, V, B, dev)
    out, grads = forward_backward(delta_rule, inputs, gos, output_final_state=True, backend=backend)
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    assert set(ref_grads) == {"q", "k", "v", "beta", "initial_state"}
    assert_all_close(f"{backend} T={T} K={K} V={V}", out, ref_out, grads, ref_grads, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_no_initial_state_custom_scale_beta_up_to_2(backend, device, triton_device, nan_empty):
    """No h0, only o used downstream, scale given, beta in (0, 2) (the 'negative eigenvalue' regime)."""
    dev = _dev(backend, device, triton_device)
    inputs = _inputs(1, 70, 3, 32, 24, 1, torch.float32, dev, h0=False, beta_max=2.0)
    gos = [torch.randn(1, 70, 3, 24, device=dev), None]
    out, grads = forward_backward(delta_rule, inputs, gos, scale=0.3, backend=backend)
    ref_out, ref_grads = _reference(inputs, gos, scale=0.3)
    assert out[1] is None
    assert_all_close(backend, out, ref_out, grads, ref_grads, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_gradient_through_final_state_only(backend, device, triton_device, nan_empty):
    """The loss sees only the final state (o is unused): gradients still reach every input."""
    dev = _dev(backend, device, triton_device)
    B, T, H, K, V = 2, 80, 2, 16, 32
    inputs = _inputs(B, T, H, K, V, B, torch.float32, dev)
    gos = [None, torch.randn(B, H, K, V, device=dev)]
    out, grads = forward_backward(delta_rule, inputs, gos, output_final_state=True, backend=backend)
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    assert ref_grads["q"] is None  # q does not influence the state ...
    assert grads["q"] is None or grads["q"].abs().max() == 0  # ... so its gradient is absent or zero
    assert_all_close(backend, out, ref_out, grads, ref_grads, TOL[torch.float32])


def test_torch_long_sequence(device):
    """Many chunks (T = 1000, not a multiple of the chunk size)."""
    B, T, H, K, V = 1, 1000, 2, 32, 32
    inputs = _inputs(B, T, H, K, V, B, torch.float32, device)
    gos = _grads_out(B, T, H, K, V, B, device)
    out, grads = forward_backward(delta_rule, inputs, gos, output_final_state=True, backend="torch")
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    assert_all_close("torch T=1000", out, ref_out, grads, ref_grads, TOL[torch.float32])


def test_reference_is_the_recurrence():
    """The reference against the closed form S_t = (I - b k k^T) S_{t-1} + b k v^T written out for 3 steps."""
    torch.manual_seed(1)
    K, V = 4, 3
    q, k, v = torch.randn(1, 3, 1, K), F.normalize(torch.randn(1, 3, 1, K), dim=-1), torch.randn(1, 3, 1, V)
    b = torch.rand(1, 3, 1)
    S = torch.randn(K, V)
    s0 = S.clone()
    outs = []
    for t in range(3):
        kt, vt, bt = k[0, t, 0], v[0, t, 0], b[0, t, 0]
        S = (torch.eye(K) - bt * torch.outer(kt, kt)) @ S + bt * torch.outer(kt, vt)
        outs.append(S.T @ (q[0, t, 0] * 0.7))
    o, st = delta_rule_reference(q, k, v, b, 0.7, s0[None, None])
    assert_close("o", o[0, :, 0], torch.stack(outs), 1e-6)
    assert_close("state", st[0, 0], S, 1e-6)


# ----------------------------------------------------------------------------------------------
# low precision: inputs in bf16 / fp16, states in fp32, compared with the fp32 reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    B, T, H, K, V = 1, 100, 2, 32, 48
    inputs = _inputs(B, T, H, K, V, B, dtype, dev)
    gos = _grads_out(B, T, H, K, V, B, dev)
    out, grads = forward_backward(delta_rule, inputs, gos, output_final_state=True, backend=backend)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    assert all(grads[n].dtype == dtype for n in ("q", "k", "v", "beta"))
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    assert_all_close(f"{backend} {dtype}", out, ref_out, grads, ref_grads, TOL[dtype], GRAD_TOL[dtype])


# ----------------------------------------------------------------------------------------------
# packed variable-length sequences
# ----------------------------------------------------------------------------------------------

CU = [0, 1, 1, 64, 150, 213]  # a 1-token sequence, an empty one, a full chunk, crossing chunks


@pytest.mark.parametrize("backend", ["reference", "torch", TRITON])
def test_varlen_equals_sequences_alone(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    H, K, V = 2, 16, 24
    cu = torch.tensor(CU, dtype=torch.int32, device=dev)
    N, T = len(CU) - 1, CU[-1]
    inputs = _inputs(1, T, H, K, V, N, torch.float32, dev)
    o, ht = delta_rule(**inputs, cu_seqlens=cu, output_final_state=True, backend=backend)
    assert o.shape == (1, T, H, V) and ht.shape == (N, H, K, V)
    for n in range(N):
        s, e = CU[n], CU[n + 1]
        h0 = inputs["initial_state"][n : n + 1]
        if e == s:  # empty sequence: the state passes through unchanged
            assert_close(f"empty seq {n} state", ht[n], h0[0], 1e-6)
            continue
        alone = {k: x[:, s:e] for k, x in inputs.items() if k != "initial_state"}
        o_n, ht_n = delta_rule_reference(**alone, scale=K**-0.5, initial_state=h0)
        assert_close(f"{backend} seq {n} output", o[:, s:e], o_n, TOL[torch.float32])
        assert_close(f"{backend} seq {n} state", ht[n : n + 1], ht_n, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_varlen_gradients(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    H, K, V = 2, 16, 24
    cu = torch.tensor(CU, dtype=torch.int64, device=dev)
    N, T = len(CU) - 1, CU[-1]
    inputs = _inputs(1, T, H, K, V, N, torch.float32, dev)
    gos = _grads_out(1, T, H, K, V, N, dev)
    kw = dict(cu_seqlens=cu, output_final_state=True)
    out, grads = forward_backward(delta_rule, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} varlen", out, ref_out, grads, ref_grads, TOL[torch.float32])


# ----------------------------------------------------------------------------------------------
# q/k L2 norm, the fused recurrent kernel
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_use_qk_l2norm(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    B, T, H, K, V = 1, 40, 2, 16, 16
    inputs = _inputs(B, T, H, K, V, B, torch.float32, dev)
    inputs["k"] = 3.0 * torch.randn(B, T, H, K, device=dev)  # not normalized
    gos = _grads_out(B, T, H, K, V, B, dev)
    kw = dict(use_qk_l2norm=True, output_final_state=True)
    out, grads = forward_backward(delta_rule, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} l2norm", out, ref_out, grads, ref_grads, TOL[torch.float32])
    # the flag is the same as normalizing by hand
    qn, kn = F.normalize(inputs["q"], dim=-1, eps=1e-12), F.normalize(inputs["k"], dim=-1, eps=1e-12)
    manual = {**inputs, "q": qn, "k": kn}
    o_manual, _ = delta_rule(**manual, backend="reference")
    assert_close("l2norm flag vs by hand", out[0], o_manual, 1e-4)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,K,V", [(1, 60, 16), (37, 16, 100)])
def test_fused_recurrent_forward(T, K, V, dtype, triton_device, nan_empty):
    B, H = 2, 2
    inputs = _inputs(B, T, H, K, V, B, dtype, triton_device)
    with torch.no_grad():
        o, ht = fused_recurrent_delta_rule(**inputs, output_final_state=True)
        ref_o, ref_ht = delta_rule(**{k: x.float() for k, x in inputs.items()}, output_final_state=True,
                                   backend="reference")
    assert o.dtype == dtype and ht.dtype == torch.float32
    assert_close("recurrent o", o, ref_o, TOL[dtype])
    assert_close("recurrent state", ht, ref_ht, TOL[torch.float32] if dtype == torch.float32 else 1e-2)


@pytest.mark.triton
def test_fused_recurrent_varlen_decoding_and_gradients(triton_device, nan_empty):
    """Varlen + one decoding step from the returned state; with gradients it routes to the chunked kernels."""
    H, K, V = 2, 16, 16
    cu = torch.tensor([0, 5, 5, 30], dtype=torch.int32, device=triton_device)
    inputs = _inputs(1, 30, H, K, V, 3, torch.float32, triton_device)
    with torch.no_grad():
        o, ht = fused_recurrent_delta_rule(**inputs, cu_seqlens=cu, output_final_state=True)
    ref_o, ref_ht = delta_rule_reference(**{k: x for k, x in inputs.items()}, scale=K**-0.5, cu_seqlens=cu)
    assert_close("recurrent varlen o", o, ref_o, 1e-5)
    assert_close("recurrent varlen state", ht, ref_ht, 1e-5)
    step = _inputs(3, 1, H, K, V, 3, torch.float32, triton_device, h0=False)
    with torch.no_grad():
        o1, h1 = fused_recurrent_delta_rule(**step, initial_state=ht, output_final_state=True)
    ref_o1, ref_h1 = delta_rule_reference(**step, scale=K**-0.5, initial_state=ref_ht)
    assert_close("decode step o", o1, ref_o1, 1e-5)
    assert_close("decode step state", h1, ref_h1, 1e-5)
    gos = _grads_out(1, 30, H, K, V, 3, triton_device)
    kw = dict(cu_seqlens=cu, output_final_state=True)
    out, grads = forward_backward(fused_recurrent_delta_rule, inputs, gos, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close("recurrent with grads", out, ref_out, grads, ref_grads, 1e-5)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def _ok(B=2, T=8, H=2, K=16, V=16):
    return dict(
        q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V), beta=torch.rand(B, T, H)
    )


@pytest.mark.parametrize(
    "change,exc,words",
    [
        (lambda a: a.update(q=torch.randn(2, 8, 16)), ValueError, ["q", "[B, T, H, K]"]),
        (lambda a: a.update(k=torch.randn(2, 8, 2, 32)), ValueError, ["k", "[2, 8, 2, 32]"]),
        (lambda a: a.update(v=torch.randn(2, 9, 2, 16)), ValueError, ["v", "[B, T, H, V]"]),
        (lambda a: a.update(beta=torch.rand(2, 8, 2, 1)), ValueError, ["beta", "[B, T, H]"]),
        (lambda a: a.update(v=a["v"].double()), TypeError, ["v", "float64"]),
        (lambda a: a.update(q=a["q"].long()), TypeError, ["q", "int64"]),
        (lambda a: a.update(k=a["k"].half()), TypeError, ["k", "float16"]),
        (lambda a: a.update(initial_state=torch.zeros(3, 2, 16, 16)), ValueError, ["initial_state", "[N, H, K, V]"]),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 8])), ValueError, ["cu_seqlens", "batch size 2"]),
        (lambda a: a.update(q=torch.randn(2, 0, 2, 16), k=torch.randn(2, 0, 2, 16), v=torch.randn(2, 0, 2, 16),
                            beta=torch.rand(2, 0, 2)), ValueError, ["T=0"]),
        (lambda a: a.update(backend="cuda"), ValueError, ["backend", "'cuda'"]),
        (lambda a: a.update(scale="big"), TypeError, ["scale", "str"]),
    ],
)
def test_bad_input_raises_clear_errors(change, exc, words):
    args = _ok()
    change(args)
    with pytest.raises(exc) as info:
        delta_rule(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def test_bad_cu_seqlens():
    args = _ok(B=1)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and end at T=8"):
        delta_rule(**args, cu_seqlens=torch.tensor([0, 4, 7]))
    with pytest.raises(TypeError, match="cu_seqlens has dtype torch.float32"):
        delta_rule(**args, cu_seqlens=torch.tensor([0.0, 8.0]))
    with pytest.raises(ValueError, match="initial_state has shape"):
        delta_rule(**args, cu_seqlens=torch.tensor([0, 3, 8]), initial_state=torch.zeros(1, 2, 16, 16))


@pytest.mark.triton
def test_triton_head_dim_limit(triton_device):
    args = {k: x.to(triton_device) for k, x in _ok(B=1, T=4, K=300).items()}
    with pytest.raises(ValueError, match="K=300"):
        delta_rule(**args, backend="triton")
    with pytest.raises(ValueError, match="K=300"):
        fused_recurrent_delta_rule(**args)


def test_torch_and_reference_differ_from_plain_linear_attention(device):
    """Sanity check that the tests can fail: with beta > 0 the delta rule is not sum_j k_j v_j^T."""
    inputs = _inputs(1, 20, 1, 8, 8, 1, torch.float32, device, h0=False)
    o, _ = delta_rule(**inputs, backend="torch")
    q, k, v = inputs["q"][0, :, 0] * 8**-0.5, inputs["k"][0, :, 0], inputs["v"][0, :, 0]
    plain = torch.tril(q @ k.T) @ v
    assert rel_err(o[0, :, 0], plain) > 1e-2


@pytest.mark.slow
def test_triton_kernels_compile_for_hopper():
    """Without a GPU: compile every kernel for sm_90 (bf16, K = V = 128 and the K = 256 tiling; fp16, 60)."""
    import os
    import subprocess
    import sys

    from seqzoo.kernels._backend import triton_available

    if not triton_available():
        pytest.fail("triton is not importable")
    script = os.path.join(os.path.dirname(__file__), "compile_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # every config autotune can pick at the benchmark shape: no spills; other head dims: compiles, fits
    for args in (["bf16", "128", "--all-configs", "--no-spills"], ["bf16", "256", "fp16", "60"]):
        res = subprocess.run([sys.executable, script, "delta_rule", *args], capture_output=True, text=True, env=env,
                             timeout=900)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
