"""selective_scan: every backend against the per-token recurrence (reference.py, run in fp64 as ground truth),
outputs and gradients of u, delta, A, B, C, D, z, delta_bias, initial_state and through the final state, at
awkward shapes (T = 1, 63, 100; D and N not powers of two; grouped B/C), packed sequences (each equal to running
it alone), NaN-poisoned empties, low precision, the recurrent decoding kernel, MEGA's damped EMA as a special
case, and clear errors."""

import pytest
import torch

from seqzoo.kernels import selective_scan
from seqzoo.kernels.selective_scan.reference import selective_scan_reference
from seqzoo.kernels.testing import assert_all_close, assert_close, forward_backward, rel_err

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 2e-2}
TRITON = pytest.param("triton", marks=pytest.mark.triton)


def _inputs(Bsz, T, Dm, G, N, Nseq, dtype, device, *, h0=True, optional=True):
    """A = -U(0.2, 3.2) per (channel, state); Δ = softplus(N(0,1) + bias)."""
    inputs = {
        "u": torch.randn(Bsz, T, Dm, device=device).to(dtype),
        "delta": torch.randn(Bsz, T, Dm, device=device).to(dtype),
        "A": -(0.2 + 3.0 * torch.rand(Dm, N, device=device)),
        "B": torch.randn(Bsz, T, G, N, device=device).to(dtype),
        "C": torch.randn(Bsz, T, G, N, device=device).to(dtype),
    }
    if optional:
        inputs["D"] = torch.randn(Dm, device=device)
        inputs["z"] = torch.randn(Bsz, T, Dm, device=device).to(dtype)
        inputs["delta_bias"] = 0.5 * torch.randn(Dm, device=device)
    if h0:
        inputs["initial_state"] = torch.randn(Nseq, Dm, N, device=device)
    return inputs


def _grads_out(Bsz, T, Dm, N, Nseq, device):
    return [torch.randn(Bsz, T, Dm, device=device), torch.randn(Nseq, Dm, N, device=device)]


def _reference(inputs, gos, **kw):
    """Ground truth: the recurrence in fp64 on fp64 copies of the inputs."""
    ref_in = {k: v.double() if v is not None and v.is_floating_point() else v for k, v in inputs.items()}
    return forward_backward(selective_scan_reference, ref_in, [g.double() if g is not None else None for g in gos],
                            **kw)


def _dev(backend, device, triton_device):
    return triton_device if backend == "triton" else device


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("T,Dm,G,N", [(1, 12, 3, 10), (63, 20, 1, 16), (100, 12, 2, 5)])
def test_matches_reference(backend, T, Dm, G, N, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    Bsz = 2
    inputs = _inputs(Bsz, T, Dm, G, N, Bsz, torch.float32, dev)
    gos = _grads_out(Bsz, T, Dm, N, Bsz, dev)
    kw = dict(delta_softplus=True, output_final_state=True)
    out, grads = forward_backward(selective_scan, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert set(k for k, g in ref_grads.items() if g is not None) == {
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"}
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
    assert_all_close(f"{backend} T={T} D={Dm} G={G} N={N}", out, ref_out, grads, ref_grads, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_plain_delta_no_optional_inputs(backend, device, triton_device, nan_empty):
    """delta used as given (positive, no softplus, no bias), no D, z, h0; only y is used downstream."""
    dev = _dev(backend, device, triton_device)
    inputs = _inputs(1, 50, 24, 1, 7, 1, torch.float32, dev, h0=False, optional=False)
    inputs["delta"] = inputs["delta"].abs() * 0.3
    gos = [torch.randn(1, 50, 24, device=dev), None]
    out, grads = forward_backward(selective_scan, inputs, gos, backend=backend)
    ref_out, ref_grads = _reference(inputs, gos)
    assert out[1] is None
    assert_all_close(backend, out, ref_out, grads, ref_grads, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_gradient_through_final_state_only(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    Bsz, T, Dm, G, N = 2, 40, 16, 2, 6
    inputs = _inputs(Bsz, T, Dm, G, N, Bsz, torch.float32, dev)
    gos = [None, torch.randn(Bsz, Dm, N, device=dev)]
    kw = dict(delta_softplus=True, output_final_state=True)
    out, grads = forward_backward(selective_scan, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert ref_grads["C"] is None
    assert grads["C"] is None or grads["C"].abs().max() == 0
    assert_all_close(backend, out, ref_out, grads, ref_grads, TOL[torch.float32])


def test_torch_long_sequence(device):
    """A long sequence through the token loop (T = 1000)."""
    Bsz, T, Dm, G, N = 1, 1000, 8, 1, 4
    inputs = _inputs(Bsz, T, Dm, G, N, Bsz, torch.float32, device)
    gos = _grads_out(Bsz, T, Dm, N, Bsz, device)
    kw = dict(delta_softplus=True, output_final_state=True)
    out, grads = forward_backward(selective_scan, inputs, gos, backend="torch", **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close("torch T=1000", out, ref_out, grads, ref_grads, TOL[torch.float32])


def test_torch_inference_equals_training_forward(device):
    """Under no_grad the torch path keeps no states for a backward; its outputs must not change."""
    inputs = _inputs(2, 37, 8, 2, 4, 2, torch.float32, device)
    kw = dict(delta_softplus=True, output_final_state=True, backend="torch")
    leaves = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in inputs.items()}
    y, h = selective_scan(**leaves, **kw)
    assert y.requires_grad
    with torch.no_grad():
        y0, h0 = selective_scan(**leaves, **kw)
    assert torch.equal(y0, y.detach()) and torch.equal(h0, h.detach())


def test_reference_is_the_recurrence():
    """The reference against the recurrence written out for 3 steps of 2 channels."""
    torch.manual_seed(1)
    N = 3
    u, delta, z = torch.randn(1, 3, 2), torch.rand(1, 3, 2), torch.randn(1, 3, 2)
    A, B, C, D = -torch.rand(2, N), torch.randn(1, 3, 1, N), torch.randn(1, 3, 1, N), torch.randn(2)
    x = torch.randn(2, N)
    x0 = x.clone()
    ys = []
    for t in range(3):
        x = torch.exp(delta[0, t, :, None] * A) * x + (delta[0, t] * u[0, t])[:, None] * B[0, t]
        y = x @ C[0, t, 0] + D * u[0, t]
        ys.append(y * z[0, t] * torch.sigmoid(z[0, t]))
    y, xt = selective_scan_reference(u, delta, A, B, C, D=D, z=z, initial_state=x0[None], output_final_state=True)
    assert_close("y", y[0], torch.stack(ys), 1e-6)
    assert_close("state", xt[0], x, 1e-6)


def test_mega_damped_ema_is_a_special_case(device):
    """MEGA's multi-dimensional damped EMA, h_t = α ⊙ x_t + (1 − α ⊙ δ) ⊙ h_{t-1}, y_t = η · h_t per channel,
    is selective_scan with Δ = 1, A = log(1 − α δ), one group per channel, B = α and C = η at every step."""
    Dm, N, T = 6, 4, 30
    alpha, damp = torch.rand(Dm, N, device=device), torch.rand(Dm, N, device=device)
    eta, x = torch.randn(Dm, N, device=device), torch.randn(1, T, Dm, device=device)
    h, ys = torch.zeros(Dm, N, device=device), []
    for t in range(T):
        h = alpha * x[0, t, :, None] + (1 - alpha * damp) * h
        ys.append((h * eta).sum(-1))
    y, _ = selective_scan(x, torch.ones_like(x), torch.log1p(-alpha * damp), alpha.expand(1, T, Dm, N),
                          eta.expand(1, T, Dm, N), backend="torch")
    assert_close("EMA", y[0], torch.stack(ys), 1e-5)


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    Bsz, T, Dm, G, N = 1, 70, 16, 1, 12
    inputs = _inputs(Bsz, T, Dm, G, N, Bsz, dtype, dev)
    gos = _grads_out(Bsz, T, Dm, N, Bsz, dev)
    kw = dict(delta_softplus=True, output_final_state=True)
    out, grads = forward_backward(selective_scan, inputs, gos, backend=backend, **kw)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    assert all(grads[n].dtype == dtype for n in ("u", "delta", "B", "C", "z"))
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} {dtype}", out, ref_out, grads, ref_grads, TOL[dtype], GRAD_TOL[dtype])


CU = [0, 1, 1, 16, 50, 83]  # a 1-token sequence, an empty one, exactly one Triton chunk, crossing chunks


@pytest.mark.parametrize("backend", ["reference", "torch", TRITON])
def test_varlen_equals_sequences_alone(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    Dm, G, N = 12, 2, 5
    cu = torch.tensor(CU, dtype=torch.int32, device=dev)
    Nseq, T = len(CU) - 1, CU[-1]
    inputs = _inputs(1, T, Dm, G, N, Nseq, torch.float32, dev)
    y, ht = selective_scan(**inputs, delta_softplus=True, cu_seqlens=cu, output_final_state=True, backend=backend)
    assert y.shape == (1, T, Dm) and ht.shape == (Nseq, Dm, N)
    for n in range(Nseq):
        s, e = CU[n], CU[n + 1]
        h0 = inputs["initial_state"][n: n + 1]
        if e == s:
            assert_close(f"empty seq {n} state", ht[n], h0[0], 1e-6)
            continue
        alone = {k: (v[:, s:e] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
        alone["initial_state"] = h0
        y_n, ht_n = selective_scan_reference(**alone, delta_softplus=True, output_final_state=True)
        assert_close(f"{backend} seq {n} output", y[:, s:e], y_n, TOL[torch.float32])
        assert_close(f"{backend} seq {n} state", ht[n: n + 1], ht_n, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_varlen_gradients(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    Dm, G, N = 12, 2, 5
    cu = torch.tensor(CU, dtype=torch.int64, device=dev)
    Nseq, T = len(CU) - 1, CU[-1]
    inputs = _inputs(1, T, Dm, G, N, Nseq, torch.float32, dev)
    gos = _grads_out(1, T, Dm, N, Nseq, dev)
    kw = dict(delta_softplus=True, cu_seqlens=cu, output_final_state=True)
    out, grads = forward_backward(selective_scan, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} varlen", out, ref_out, grads, ref_grads, TOL[torch.float32])


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recurrent_kernel_varlen_and_decoding(dtype, triton_device, nan_empty):
    Dm, G, N = 20, 2, 6
    cu = torch.tensor([0, 5, 5, 30], dtype=torch.int32, device=triton_device)
    inputs = _inputs(1, 30, Dm, G, N, 3, dtype, triton_device)
    f32 = lambda d: {k: v.float() for k, v in d.items()}  # noqa: E731
    with torch.no_grad():
        y, ht = selective_scan(**inputs, delta_softplus=True, cu_seqlens=cu, output_final_state=True,
                               backend="triton")
        ref_y, ref_ht = selective_scan_reference(**f32(inputs), delta_softplus=True, cu_seqlens=cu,
                                                 output_final_state=True)
        assert y.dtype == dtype and ht.dtype == torch.float32
        assert_close("recurrent varlen y", y, ref_y, TOL[dtype])
        assert_close("recurrent varlen state", ht, ref_ht, 1e-5 if dtype == torch.float32 else 1e-2)
        step = _inputs(3, 1, Dm, G, N, 3, dtype, triton_device, h0=False)
        y1, h1 = selective_scan(**step, delta_softplus=True, initial_state=ht, output_final_state=True,
                                backend="triton")
        ref_y1, ref_h1 = selective_scan_reference(**f32(step), delta_softplus=True, initial_state=ref_ht,
                                                  output_final_state=True)
    assert_close("decode step y", y1, ref_y1, TOL[dtype])
    assert_close("decode step state", h1, ref_h1, 1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("T", [10, 70])  # the recurrent kernel (no autograd, T <= 64) and the chunked ones
def test_non_contiguous_inputs(backend, T, device, triton_device, nan_empty):
    """Views as a layer makes them (u transposed back from a conv, B and C split from one projection)."""
    dev = _dev(backend, device, triton_device)
    Dm, N = 16, 5
    u = torch.randn(1, Dm, T, device=dev).transpose(1, 2)  # strides (Dm·T, 1, T)
    proj = torch.randn(1, T, 2 * N + 3, device=dev)
    Bm, Cm = proj[..., :N].unsqueeze(2), proj[..., N:2 * N].unsqueeze(2)
    inputs = dict(u=u, delta=torch.randn(1, T, Dm, device=dev), A=-torch.rand(Dm, N, device=dev), B=Bm, C=Cm,
                  z=torch.randn(1, T, 2 * Dm, device=dev)[..., :Dm], D=torch.randn(Dm, device=dev))
    with torch.no_grad():
        y, ht = selective_scan(**inputs, delta_softplus=True, output_final_state=True, backend=backend)
        ref_y, ref_ht = selective_scan_reference(**{k: v.contiguous() for k, v in inputs.items()},
                                                 delta_softplus=True, output_final_state=True)
    assert_close("non-contiguous y", y, ref_y, TOL[torch.float32])
    assert_close("non-contiguous state", ht, ref_ht, TOL[torch.float32])


def _ok(Bsz=2, T=8, Dm=12, G=2, N=4):
    return dict(u=torch.randn(Bsz, T, Dm), delta=torch.rand(Bsz, T, Dm), A=-torch.rand(Dm, N),
                B=torch.randn(Bsz, T, G, N), C=torch.randn(Bsz, T, G, N))


@pytest.mark.parametrize(
    "change,exc,words",
    [
        (lambda a: a.update(u=torch.randn(2, 8, 3, 4)), ValueError, ["u", "[B, T, D]"]),
        (lambda a: a.update(delta=torch.rand(2, 8, 11)), ValueError, ["delta", "[B, T, D]"]),
        (lambda a: a.update(A=torch.randn(12)), ValueError, ["A", "[D, N]"]),
        (lambda a: a.update(B=torch.randn(2, 8, 5, 4), C=torch.randn(2, 8, 5, 4)), ValueError, ["D=12", "G=5"]),
        (lambda a: a.update(C=torch.randn(2, 8, 2, 3)), ValueError, ["C", "[2, 8, 2, 4]"]),
        (lambda a: a.update(B=torch.randn(2, 8, 2, 5)), ValueError, ["B", "[B, T, G, N]"]),
        (lambda a: a.update(C=a["C"].half()), TypeError, ["C", "float16"]),
        (lambda a: a.update(u=a["u"].double()), TypeError, ["u", "float64"]),
        (lambda a: a.update(D=torch.randn(12, 1)), ValueError, ["D", "[D]"]),
        (lambda a: a.update(z=torch.randn(2, 8, 13)), ValueError, ["z", "[B, T, D]"]),
        (lambda a: a.update(delta_bias=torch.randn(3)), ValueError, ["delta_bias", "[D]"]),
        (lambda a: a.update(delta_softplus=1), TypeError, ["delta_softplus"]),
        (lambda a: a.update(initial_state=torch.zeros(2, 12, 5)), ValueError, ["initial_state", "[N_seq, D, N]"]),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 8])), ValueError, ["cu_seqlens", "batch size 2"]),
        (lambda a: a.update(u=torch.randn(2, 0, 12), delta=torch.rand(2, 0, 12), B=torch.randn(2, 0, 2, 4),
                            C=torch.randn(2, 0, 2, 4)), ValueError, ["T=0"]),
        (lambda a: a.update(backend="gpu"), ValueError, ["backend", "'gpu'"]),
    ],
)
def test_bad_input_raises_clear_errors(change, exc, words):
    args = _ok()
    change(args)
    with pytest.raises(exc) as info:
        selective_scan(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.triton
def test_triton_state_limit(triton_device):
    with pytest.raises(ValueError, match="N=300"):
        selective_scan(**_ok(Bsz=1, T=4, N=300), backend="triton")


def test_selection_matters(device):
    """Sanity check that the comparisons can fail: B varying over time changes the output."""
    inputs = _inputs(1, 30, 8, 1, 4, 1, torch.float32, device, h0=False, optional=False)
    y, _ = selective_scan(**inputs, backend="torch")
    fixed = {**inputs, "B": inputs["B"][:, :1].expand_as(inputs["B"])}
    y0, _ = selective_scan(**fixed, backend="torch")
    assert rel_err(y, y0) > 1e-2


@pytest.mark.slow
def test_triton_kernels_compile_for_hopper():
    """Without a GPU: compile every selective_scan kernel for sm_90 (bf16: D = 1536, N = 16; D = 96, N = 128)."""
    import os
    import subprocess
    import sys

    from seqzoo.kernels._backend import triton_available

    if not triton_available():
        pytest.fail("triton is not importable")
    script = os.path.join(os.path.dirname(__file__), "compile_ssm_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, script, "selective_scan"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
