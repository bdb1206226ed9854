"""ssd_scan: every backend against the per-token recurrence (reference.py, run in fp64 as ground truth), outputs
and gradients of x, dt, A, B, C, D, dt_bias, initial_state and through the final state, at awkward shapes
(T = 1, 63, 100, 130; P, N not powers of two; grouped B/C), packed sequences (each equal to running it alone),
NaN-poisoned empties, the dt options, low precision, the recurrent decoding kernel, and clear errors."""

import math

import pytest
import torch

from seqzoo.kernels import ssd_scan
from seqzoo.kernels.ssd.reference import ssd_scan_reference
from seqzoo.kernels.testing import assert_all_close, assert_close, forward_backward, rel_err

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 2e-2}
TRITON = pytest.param("triton", marks=pytest.mark.triton)


def _inputs(Bsz, T, H, P, G, N, Nseq, dtype, device, *, h0=True, d_shape="hp", bias=True):
    """A = -U(0.5, 2.5), Δ = softplus(N(0,1) + bias) ~ 0.7: decays from ~0.99 to ~0.2 per token."""
    inputs = {
        "x": torch.randn(Bsz, T, H, P, device=device).to(dtype),
        "dt": torch.randn(Bsz, T, H, device=device).to(dtype),
        "A": -(0.5 + 2.0 * torch.rand(H, device=device)),
        "B": torch.randn(Bsz, T, G, N, device=device).to(dtype),
        "C": torch.randn(Bsz, T, G, N, device=device).to(dtype),
    }
    if d_shape == "hp":
        inputs["D"] = torch.randn(H, P, device=device)
    elif d_shape == "h":
        inputs["D"] = torch.randn(H, device=device)
    if bias:
        inputs["dt_bias"] = 0.5 * torch.randn(H, device=device)
    if h0:
        inputs["initial_state"] = torch.randn(Nseq, H, P, N, device=device)
    return inputs


def _grads_out(Bsz, T, H, P, N, Nseq, device):
    return [torch.randn(Bsz, T, H, P, device=device), torch.randn(Nseq, H, P, N, device=device)]


def _reference(inputs, gos, **kw):
    """Ground truth: the recurrence in fp64 on fp64 copies of the inputs."""
    ref_in = {k: v.double() if v is not None and v.is_floating_point() else v for k, v in inputs.items()}
    return forward_backward(ssd_scan_reference, ref_in, [g.double() if g is not None else None for g in gos], **kw)


def _dev(backend, device, triton_device):
    return triton_device if backend == "triton" else device


# ----------------------------------------------------------------------------------------------
# fp32: every backend == reference, outputs and all gradients
# ----------------------------------------------------------------------------------------------

SHAPES = [  # (T, H, P, G, N, D shape)
    (1, 4, 12, 2, 10, "hp"),
    (63, 2, 20, 1, 24, "h"),
    (100, 4, 12, 2, 10, "hp"),
    (130, 2, 70, 2, 80, "h"),  # several P and N tiles in the Triton kernels, three chunks
]


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("T,H,P,G,N,d_shape", SHAPES)
def test_matches_reference(backend, T, H, P, G, N, d_shape, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    Bsz = 2
    inputs = _inputs(Bsz, T, H, P, G, N, Bsz, torch.float32, dev, d_shape=d_shape)
    gos = _grads_out(Bsz, T, H, P, N, Bsz, dev)
    out, grads = forward_backward(ssd_scan, inputs, gos, output_final_state=True, backend=backend)
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    assert set(k for k, g in ref_grads.items() if g is not None) == {
        "x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"}
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
    assert_all_close(f"{backend} T={T} P={P} N={N}", out, ref_out, grads, ref_grads, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("options", [
    dict(dt_softplus=False),  # dt used as given (positive here)
    dict(dt_limit=(0.2, 0.9)),  # the clamp is active for many tokens: no gradient there
])
def test_dt_options_no_h0_no_d(backend, options, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    inputs = _inputs(1, 70, 3, 16, 1, 12, 1, torch.float32, dev, h0=False, d_shape=None, bias="dt_limit" in options)
    if not options.get("dt_softplus", True):
        inputs["dt"] = inputs["dt"].abs() * 0.5
    gos = [torch.randn(1, 70, 3, 16, device=dev), None]
    out, grads = forward_backward(ssd_scan, inputs, gos, backend=backend, **options)
    ref_out, ref_grads = _reference(inputs, gos, **options)
    assert out[1] is None
    assert_all_close(f"{backend} {options}", out, ref_out, grads, ref_grads, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_gradient_through_final_state_only(backend, device, triton_device, nan_empty):
    """The loss sees only the final state: gradients still reach x, dt, A, B, dt_bias and h0 (not C or D)."""
    dev = _dev(backend, device, triton_device)
    Bsz, T, H, P, G, N = 2, 80, 2, 16, 2, 12
    inputs = _inputs(Bsz, T, H, P, G, N, Bsz, torch.float32, dev)
    gos = [None, torch.randn(Bsz, H, P, N, device=dev)]
    out, grads = forward_backward(ssd_scan, inputs, gos, output_final_state=True, backend=backend)
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    assert ref_grads["C"] is None
    assert grads["C"] is None or grads["C"].abs().max() == 0
    assert_all_close(backend, out, ref_out, grads, ref_grads, TOL[torch.float32])


def test_torch_long_sequence_and_chunk_size(device):
    """Many chunks (T = 1000); the chunk size changes nothing beyond rounding."""
    Bsz, T, H, P, G, N = 1, 1000, 2, 16, 1, 16
    inputs = _inputs(Bsz, T, H, P, G, N, Bsz, torch.float32, device)
    gos = _grads_out(Bsz, T, H, P, N, Bsz, device)
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    for chunk in (64, 48):
        out, grads = forward_backward(ssd_scan, inputs, gos, output_final_state=True, backend="torch",
                                      chunk_size=chunk)
        assert_all_close(f"torch T=1000 chunk={chunk}", out, ref_out, grads, ref_grads, TOL[torch.float32])


def test_reference_is_the_recurrence():
    """The reference against the recurrence written out for 3 steps of one head."""
    torch.manual_seed(1)
    P, N = 3, 4
    x, dt = torch.randn(1, 3, 1, P), torch.randn(1, 3, 1)
    B, C = torch.randn(1, 3, 1, N), torch.randn(1, 3, 1, N)
    A, D, bias = torch.tensor([-1.3]), torch.tensor([0.4]), torch.tensor([0.2])
    S = torch.randn(P, N)
    s0 = S.clone()
    ys = []
    for t in range(3):
        d = math.log1p(math.exp(dt[0, t, 0].item() + 0.2))
        S = math.exp(d * -1.3) * S + d * torch.outer(x[0, t, 0], B[0, t, 0])
        ys.append(S @ C[0, t, 0] + 0.4 * x[0, t, 0])
    y, st = ssd_scan_reference(x, dt, A, B, C, D=D, dt_bias=bias, initial_state=s0[None, None],
                               output_final_state=True)
    assert_close("y", y[0, :, 0], torch.stack(ys), 1e-6)
    assert_close("state", st[0, 0], S, 1e-6)


# ----------------------------------------------------------------------------------------------
# low precision: inputs in bf16 / fp16, states in fp32, compared with the fp64 reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    Bsz, T, H, P, G, N = 1, 100, 2, 24, 1, 20
    inputs = _inputs(Bsz, T, H, P, G, N, Bsz, dtype, dev)
    gos = _grads_out(Bsz, T, H, P, N, Bsz, dev)
    out, grads = forward_backward(ssd_scan, inputs, gos, output_final_state=True, backend=backend)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    assert all(grads[n].dtype == dtype for n in ("x", "dt", "B", "C"))
    ref_out, ref_grads = _reference(inputs, gos, output_final_state=True)
    assert_all_close(f"{backend} {dtype}", out, ref_out, grads, ref_grads, TOL[dtype], GRAD_TOL[dtype])


# ----------------------------------------------------------------------------------------------
# packed variable-length sequences
# ----------------------------------------------------------------------------------------------

CU = [0, 1, 1, 64, 150, 213]  # a 1-token sequence, an empty one, a full chunk, crossing chunks


@pytest.mark.parametrize("backend", ["reference", "torch", TRITON])
def test_varlen_equals_sequences_alone(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    H, P, G, N = 2, 12, 1, 10
    cu = torch.tensor(CU, dtype=torch.int32, device=dev)
    Nseq, T = len(CU) - 1, CU[-1]
    inputs = _inputs(1, T, H, P, G, N, Nseq, torch.float32, dev)
    y, ht = ssd_scan(**inputs, cu_seqlens=cu, output_final_state=True, backend=backend)
    assert y.shape == (1, T, H, P) and ht.shape == (Nseq, H, P, N)
    for n in range(Nseq):
        s, e = CU[n], CU[n + 1]
        h0 = inputs["initial_state"][n: n + 1]
        if e == s:  # an empty sequence: the state passes through unchanged
            assert_close(f"empty seq {n} state", ht[n], h0[0], 1e-6)
            continue
        alone = {k: (v[:, s:e] if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
        alone["initial_state"] = h0
        y_n, ht_n = ssd_scan_reference(**alone, output_final_state=True)
        assert_close(f"{backend} seq {n} output", y[:, s:e], y_n, TOL[torch.float32])
        assert_close(f"{backend} seq {n} state", ht[n: n + 1], ht_n, TOL[torch.float32])


@pytest.mark.parametrize("backend", ["torch", TRITON])
def test_varlen_gradients(backend, device, triton_device, nan_empty):
    dev = _dev(backend, device, triton_device)
    H, P, G, N = 4, 12, 2, 10
    cu = torch.tensor(CU, dtype=torch.int64, device=dev)
    Nseq, T = len(CU) - 1, CU[-1]
    inputs = _inputs(1, T, H, P, G, N, Nseq, torch.float32, dev)
    gos = _grads_out(1, T, H, P, N, Nseq, dev)
    kw = dict(cu_seqlens=cu, output_final_state=True)
    out, grads = forward_backward(ssd_scan, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = _reference(inputs, gos, **kw)
    assert_all_close(f"{backend} varlen", out, ref_out, grads, ref_grads, TOL[torch.float32])


# ----------------------------------------------------------------------------------------------
# the recurrent Triton kernel (no autograd, T <= 64): prefill, then decoding steps from the state
# ----------------------------------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recurrent_kernel_varlen_and_decoding(dtype, triton_device, nan_empty):
    H, P, G, N = 4, 20, 2, 12
    cu = torch.tensor([0, 5, 5, 30], dtype=torch.int32, device=triton_device)
    inputs = _inputs(1, 30, H, P, G, N, 3, dtype, triton_device)
    with torch.no_grad():
        y, ht = ssd_scan(**inputs, cu_seqlens=cu, output_final_state=True, backend="triton")
        ref_y, ref_ht = ssd_scan_reference(**{k: v.float() for k, v in inputs.items()}, cu_seqlens=cu,
                                           output_final_state=True)
        assert y.dtype == dtype and ht.dtype == torch.float32
        assert_close("recurrent varlen y", y, ref_y, TOL[dtype])
        assert_close("recurrent varlen state", ht, ref_ht, 1e-5 if dtype == torch.float32 else 1e-2)
        step = _inputs(3, 1, H, P, G, N, 3, dtype, triton_device, h0=False)
        step = {k: v for k, v in step.items() if k not in ("D", "dt_bias")}
        y1, h1 = ssd_scan(**step, D=inputs["D"], dt_bias=inputs["dt_bias"], initial_state=ht,
                          output_final_state=True, backend="triton")
        ref_y1, ref_h1 = ssd_scan_reference(**{k: v.float() for k, v in step.items()}, D=inputs["D"],
                                            dt_bias=inputs["dt_bias"], initial_state=ref_ht,
                                            output_final_state=True)
    assert_close("decode step y", y1, ref_y1, TOL[dtype])
    assert_close("decode step state", h1, ref_h1, 1e-5 if dtype == torch.float32 else 1e-2)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", TRITON])
@pytest.mark.parametrize("T", [10, 70])  # the recurrent kernel (no autograd, T <= 64) and the chunked ones
def test_non_contiguous_inputs(backend, T, device, triton_device, nan_empty):
    """Views as a layer makes them (x, B, C split from one conv output, dt from the projection)."""
    dev = _dev(backend, device, triton_device)
    H, P, N = 2, 8, 6
    xbc = torch.randn(1, H * P + 2 * N, T, device=dev).transpose(1, 2)  # a conv's output, transposed back
    x = xbc[..., :H * P].unflatten(-1, (H, P))  # [1, T, H, P], strides (., 1, ., T)
    Bm, Cm = xbc[..., H * P:H * P + N].unsqueeze(2), xbc[..., H * P + N:].unsqueeze(2)
    dt = torch.randn(1, T, H + 5, device=dev)[..., :H]
    inputs = dict(x=x, dt=dt, A=-torch.rand(H, device=dev) - 0.5, B=Bm, C=Cm, D=torch.randn(H, device=dev))
    with torch.no_grad():
        y, ht = ssd_scan(**inputs, output_final_state=True, backend=backend)
        ref_y, ref_ht = ssd_scan_reference(**{k: v.contiguous() for k, v in inputs.items()}, output_final_state=True)
    assert_close("non-contiguous y", y, ref_y, TOL[torch.float32])
    assert_close("non-contiguous state", ht, ref_ht, TOL[torch.float32])


def _ok(Bsz=2, T=8, H=4, P=16, G=2, N=8):
    return dict(x=torch.randn(Bsz, T, H, P), dt=torch.randn(Bsz, T, H), A=-torch.rand(H),
                B=torch.randn(Bsz, T, G, N), C=torch.randn(Bsz, T, G, N))


@pytest.mark.parametrize(
    "change,exc,words",
    [
        (lambda a: a.update(x=torch.randn(2, 8, 64)), ValueError, ["x", "[B, T, H, P]"]),
        (lambda a: a.update(dt=torch.randn(2, 8, 3)), ValueError, ["dt", "[B, T, H]"]),
        (lambda a: a.update(A=torch.randn(4, 1)), ValueError, ["A", "[H]"]),
        (lambda a: a.update(B=torch.randn(2, 8, 3, 8), C=torch.randn(2, 8, 3, 8)), ValueError, ["H=4", "G=3"]),
        (lambda a: a.update(C=torch.randn(2, 8, 2, 9)), ValueError, ["C", "[2, 8, 2, 8]"]),
        (lambda a: a.update(B=a["B"].half()), TypeError, ["B", "float16"]),
        (lambda a: a.update(x=a["x"].double()), TypeError, ["x", "float64"]),
        (lambda a: a.update(D=torch.randn(4, 3)), ValueError, ["D", "[H, P]"]),
        (lambda a: a.update(dt_bias=torch.randn(3)), ValueError, ["dt_bias", "[H]"]),
        (lambda a: a.update(dt_limit=(1.0, 0.5)), ValueError, ["dt_limit"]),
        (lambda a: a.update(dt_softplus="yes"), TypeError, ["dt_softplus"]),
        (lambda a: a.update(chunk_size=0), ValueError, ["chunk_size"]),
        (lambda a: a.update(initial_state=torch.zeros(2, 4, 16, 9)), ValueError, ["initial_state", "[N_seq, H, P, N]"]),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 8])), ValueError, ["cu_seqlens", "batch size 2"]),
        (lambda a: a.update(x=torch.randn(2, 0, 4, 16), dt=torch.randn(2, 0, 4), B=torch.randn(2, 0, 2, 8),
                            C=torch.randn(2, 0, 2, 8)), ValueError, ["T=0"]),
        (lambda a: a.update(backend="cuda"), ValueError, ["backend", "'cuda'"]),
    ],
)
def test_bad_input_raises_clear_errors(change, exc, words):
    args = _ok()
    change(args)
    with pytest.raises(exc) as info:
        ssd_scan(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.triton
def test_triton_dim_limit(triton_device):
    args = _ok(Bsz=1, T=4, P=300)
    with pytest.raises(ValueError, match="P=300"):
        ssd_scan(**args, backend="triton")


def test_differs_from_undecayed_linear_attention(device):
    """Sanity check that the comparisons can fail: the decay matters (A = 0 would be plain linear attention)."""
    inputs = _inputs(1, 40, 1, 8, 1, 8, 1, torch.float32, device, h0=False, d_shape=None, bias=False)
    y, _ = ssd_scan(**inputs, backend="torch")
    y0, _ = ssd_scan(**{**inputs, "A": torch.zeros_like(inputs["A"])}, backend="torch")
    assert rel_err(y, y0) > 1e-2


@pytest.mark.slow
def test_triton_kernels_compile_for_hopper():
    """Without a GPU: compile every ssd_scan kernel for sm_90 (bf16, P = 64, N = 128 and P = 60, N = 200)."""
    import os
    import subprocess
    import sys

    from seqzoo.kernels._backend import triton_available

    if not triton_available():
        pytest.fail("triton is not importable")
    script = os.path.join(os.path.dirname(__file__), "compile_ssm_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, script, "ssd"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


def test_bench_minimal_listing_matches_reference():
    """The benchmark's re-implementation of the SSD paper's listing computes the same scan (so its timings
    compare like with like)."""
    from seqzoo.bench.ssd_scan import ssd_minimal

    inputs = _inputs(1, 128, 2, 8, 1, 6, 1, torch.float32, torch.device("cpu"), d_shape=None)
    y, ht = ssd_scan(**inputs, output_final_state=True, backend="reference")
    delta = torch.nn.functional.softplus(inputs["dt"] + inputs["dt_bias"])
    Bh, Ch = (inputs[k].expand(1, 128, 2, 6) for k in ("B", "C"))
    y_min, ht_min = ssd_minimal(inputs["x"] * delta[..., None], inputs["A"] * delta, Bh, Ch, 32,
                                h0=inputs["initial_state"])
    assert_close("listing y", y_min, y, 1e-5)
    assert_close("listing state", ht_min, ht, 1e-5)
