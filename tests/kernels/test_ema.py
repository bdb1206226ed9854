"""ema (MEGA's damped EMA): the FFT path and the chunked scan against the token-by-token fp32 recurrence,
outputs and every gradient (x, a, b, c, initial state, through the final state), causal and bidirectional,
awkward shapes, packed sequences with an empty one; the FFT path against MEGA's own kernel formula; the
decode step; low precision; NaN-poisoned empties; clear errors."""

import math

import pytest
import torch

from seqzoo.kernels import ema
from seqzoo.kernels.ema import ema_step, mega_ema_coefficients
from seqzoo.kernels.testing import assert_all_close, assert_close, forward_backward

PATHS = [("fft", 64), ("scan", 64), ("scan", 16)]


def _coeffs(D, N, bidirectional, device):
    """MEGA's initialisation: delta, alpha ~ N(0, 0.2); beta ~ N(0, 0.02) + alternating ±1; gamma ~ N(0, 1)."""
    shape = (2, D, N) if bidirectional else (D, N)
    sign = torch.ones(N, device=device)
    sign[1::2] = -1.0
    beta = 0.02 * torch.randn(shape, device=device) + sign
    return mega_ema_coefficients(0.2 * torch.randn(shape, device=device), 0.2 * torch.randn(shape, device=device),
                                 beta, torch.randn(shape, device=device))


def _inputs(B, T, D, N, bidirectional, h0, device, n_states=None, dtype=torch.float32):
    a, b, c = _coeffs(D, N, bidirectional, device)
    return {"x": torch.randn(B, T, D, device=device).to(dtype), "a": a, "b": b, "c": c,
            "initial_state": torch.randn(n_states or B, D, N, device=device) if h0 else None}


# (B, T, D, N, bidirectional, initial state)
CASES = [(2, 1, 5, 16, False, True), (2, 63, 20, 16, False, True), (1, 100, 7, 3, False, False),
         (2, 100, 7, 16, True, False), (1, 130, 6, 4, False, True)]


@pytest.mark.parametrize("path,chunk", PATHS)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(path, chunk, case, device, nan_empty):
    B, T, D, N, bi, h0 = case
    inputs = _inputs(B, T, D, N, bi, h0, device)
    gos = [torch.randn(B, T, D, device=device), None if bi else torch.randn(B, D, N, device=device)]
    kw = dict(bidirectional=bi, output_final_state=not bi)
    out, grads = forward_backward(ema, inputs, gos, backend=path, chunk_size=chunk, **kw)
    ref_out, ref_grads = forward_backward(ema, inputs, gos, backend="reference", **kw)
    assert_all_close(f"{path} C={chunk} {case}", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.parametrize("path,chunk", PATHS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_varlen_equals_separate_sequences(path, chunk, bidirectional, device, nan_empty):
    cu = torch.tensor([0, 5, 5, 70, 100], dtype=torch.int32, device=device)
    inputs = _inputs(1, 100, 6, 4, bidirectional, not bidirectional, device, n_states=4)
    gos = [torch.randn(1, 100, 6, device=device), None if bidirectional else torch.randn(4, 6, 4, device=device)]
    kw = dict(bidirectional=bidirectional, output_final_state=not bidirectional, cu_seqlens=cu)
    out, grads = forward_backward(ema, inputs, gos, backend=path, chunk_size=chunk, **kw)
    ref_out, ref_grads = forward_backward(ema, inputs, gos, backend="reference", **kw)
    assert_all_close(f"{path} varlen", out, ref_out, grads, ref_grads, 1e-5)
    for n in range(4):
        s, e = int(cu[n]), int(cu[n + 1])
        if e == s:
            if not bidirectional:
                assert_close("empty sequence keeps its state", out[1][n], inputs["initial_state"][n], 0.0)
            continue
        one = dict(inputs, x=inputs["x"][:, s:e],
                   initial_state=None if bidirectional else inputs["initial_state"][n:n + 1])
        y, f = ema(**one, bidirectional=bidirectional, output_final_state=not bidirectional, backend="reference")
        assert_close(f"sequence {n}", out[0][:, s:e], y, 1e-5)


def test_fft_path_is_megas_formula(device):
    """MEGA's MultiHeadEMA, written out literally: kernel = Σ_n (p·β)·q^t·γ/√N from a [D, N, T] table,
    then irfft(rfft(x, 2T)·rfft(k, 2T))[:T], plus ω·x, then SiLU. Our fft path plus the same ω·x and SiLU."""
    D, N, T = 12, 16, 90
    delta, alpha, beta, gamma = (torch.randn(D, N, 1, device=device) for _ in range(4))
    omega = torch.randn(D, device=device)
    x = torch.randn(1, T, D, device=device)
    p = torch.sigmoid(delta)
    q = 1.0 - p * torch.sigmoid(alpha)
    vander = torch.arange(T, device=device)[None, None, :] * torch.log(q)  # [D, N, T]
    kernel = torch.einsum("dnl,dn->dl", (p * beta) * torch.exp(vander), gamma[..., 0] / math.sqrt(N))
    xt = x.transpose(1, 2)  # [1, D, T]
    conv = torch.fft.irfft(torch.fft.rfft(xt, n=2 * T) * torch.fft.rfft(kernel, n=2 * T), n=2 * T)[..., :T]
    mega = torch.nn.functional.silu(conv + xt * omega[:, None]).transpose(1, 2)
    a, b, c = mega_ema_coefficients(delta[..., 0], alpha[..., 0], beta[..., 0], gamma[..., 0])
    y, _ = ema(x, a, b, c, backend="fft")
    assert_close("fft path vs MEGA", torch.nn.functional.silu(y + x * omega), mega, 1e-5)


@pytest.mark.parametrize("path", ["fft", "scan", "reference"])
def test_prefix_then_steps_equals_full(path, device):
    B, T, D, N, pre = 2, 40, 5, 16, 13
    inp = _inputs(B, T, D, N, False, False, device)
    full, _ = ema(inp["x"], inp["a"], inp["b"], inp["c"], backend="reference")
    y1, st = ema(inp["x"][:, :pre], inp["a"], inp["b"], inp["c"], output_final_state=True, backend=path)
    ys = [y1]
    for t in range(pre, T):
        y, st = ema_step(inp["x"][:, t], inp["a"], inp["b"], inp["c"], st)
        ys.append(y[:, None])
    assert_close(f"{path} prefix + steps", torch.cat(ys, 1), full, 1e-5)


@pytest.mark.parametrize("path", ["fft", "scan"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input(path, dtype, device, nan_empty):
    inputs = _inputs(1, 70, 8, 16, False, True, device, dtype=dtype)
    gos = [torch.randn(1, 70, 8, device=device), torch.randn(1, 8, 16, device=device)]
    out, grads = forward_backward(ema, inputs, gos, backend=path, output_final_state=True)
    assert out[0].dtype == dtype
    ref = dict(inputs, x=inputs["x"].float())
    ref_out, ref_grads = forward_backward(ema, ref, gos, backend="reference", output_final_state=True)
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    assert_all_close(f"{path} {dtype}", out, ref_out, grads, ref_grads, tol, 2 * tol)


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 8, 4)
    a, b, c = (torch.rand(4, 16) for _ in range(3))
    with pytest.raises(ValueError, match=r"ema: x must have 3 dims"):
        ema(x[0], a, b, c)
    with pytest.raises(ValueError, match=r"ema: a has shape \[5, 16\], expected \[4, \*\]"):
        ema(x, torch.rand(5, 16), b, c)
    with pytest.raises(ValueError, match=r"ema: c has shape \[4, 8\], expected \[4, 16\]"):
        ema(x, a, b, torch.rand(4, 8))
    with pytest.raises(ValueError, match=r"ema: a must have 3 dims \[2, D, N\]"):
        ema(x, a, b, c, bidirectional=True)
    with pytest.raises(ValueError, match=r"bidirectional EMA has no state"):
        ema(x, a[None].expand(2, 4, 16), b[None].expand(2, 4, 16), c[None].expand(2, 4, 16), bidirectional=True,
            output_final_state=True)
    with pytest.raises(ValueError, match=r"initial_state has shape \[2, 4, 8\]"):
        ema(x, a, b, c, initial_state=torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'triton'"):
        ema(x, a, b, c, backend="triton")
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int, got 0"):
        ema(x, a, b, c, chunk_size=0)
    with pytest.raises(ValueError, match=r"cu_seqlens .*batch size 1"):
        ema(x, a, b, c, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match=r"ema: state has shape"):
        ema_step(x[:, 0], a, b, c, torch.zeros(2, 4, 3))
