"""dilated_conv: the torch and Triton (interpreter) paths against the level-by-level, tap-by-tap fp32
reference, outputs and every gradient (x, weight, bias, initial state, through the final state too), at
awkward shapes; the reference against an independent F.conv1d stack; packed sequences with an empty one;
the ring-buffer decode step; the receptive field; low precision; NaN-poisoned empties; clear errors."""

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import dilated_conv
from seqzoo.kernels.dilated_conv import (
    dilated_conv_step,
    receptive_field,
    ring_to_state,
    state_size,
    state_to_ring,
)
from seqzoo.kernels.testing import assert_all_close, assert_close, forward_backward

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _inputs(B, T, D, L, K, base, device, h0=True, n_states=None, dtype=torch.float32):
    S = state_size(L, K, base)
    return {
        "x": torch.randn(B, T, D, device=device).to(dtype),
        "weight": (0.6 * torch.randn(L, D, K, device=device)).to(dtype),
        "bias": (0.2 * torch.randn(L, D, device=device)).to(dtype),
        "initial_state": torch.randn(n_states or B, D, S, device=device) if h0 else None,
    }


# (B, T, D, L, K, base, activation, residual, initial state)
TORCH_CASES = [
    (2, 1, 5, 3, 3, 2, "silu", True, True),
    (2, 63, 20, 3, 3, 2, "silu", True, True),
    (2, 100, 7, 2, 4, 3, "gelu", False, True),
    (1, 100, 33, 3, 2, 3, "relu", True, False),
    (2, 40, 6, 1, 3, 2, None, True, True),
]
TRITON_CASES = [TORCH_CASES[0], TORCH_CASES[1], TORCH_CASES[2], (1, 100, 33, 3, 2, 3, "relu", True, False)]


def _run_case(backend, case, dev):
    B, T, D, L, K, base, act, res, h0 = case
    inputs = _inputs(B, T, D, L, K, base, dev, h0=h0)
    gos = [torch.randn(B, T, D, device=dev), torch.randn(B, D, state_size(L, K, base), device=dev)]
    kw = dict(dilation_base=base, activation=act, residual=res, output_final_state=True)
    out, grads = forward_backward(dilated_conv, inputs, gos, backend=backend, **kw)
    ref_out, ref_grads = forward_backward(dilated_conv, inputs, gos, backend="reference", **kw)
    assert_all_close(f"{backend} {case}", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_matches_reference(case, device, nan_empty):
    _run_case("torch", case, device)


@pytest.mark.parametrize("rows", [5, 16])
def test_torch_streams_blocks_shorter_and_longer_than_the_history(rows, device, monkeypatch):
    """The CPU forward streams time blocks (~1024 tokens in use, so the cases above fit in one): blocks shorter
    than a level's history (P = 2, 6, 18 here) and longer ones, carried between blocks, must give the same."""
    from seqzoo.kernels.dilated_conv import torch_stream

    monkeypatch.setattr(torch_stream, "_block_rows", lambda batch, channels: rows)
    _run_case("torch", (2, 61, 6, 3, 3, 3, "silu", True, True), device)
    _run_case("torch", (1, 45, 5, 3, 2, 2, "gelu", False, False), device)


def test_torch_inference_equals_training_forward(device):
    """Under no_grad the torch path saves no levels for a backward; its outputs must not change."""
    inp = {k: v.requires_grad_(True) for k, v in _inputs(2, 50, 6, 3, 3, 2, device).items()}
    kw = dict(dilation_base=2, activation="silu", output_final_state=True, backend="torch")
    y, s = dilated_conv(**inp, **kw)
    assert y.requires_grad
    with torch.no_grad():
        y0, s0 = dilated_conv(**inp, **kw)
    assert torch.equal(y0, y.detach()) and torch.equal(s0, s.detach())


@pytest.mark.triton
@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_matches_reference(case, triton_device, nan_empty):
    _run_case("triton", case, triton_device)


def test_reference_equals_conv1d_stack(device):
    """The reference (explicit taps) against a different formulation: F.conv1d with dilation and groups."""
    B, T, D, L, K, base = 2, 70, 6, 3, 3, 2
    inp = _inputs(B, T, D, L, K, base, device, h0=False)
    y, _ = dilated_conv(inp["x"], inp["weight"], inp["bias"], dilation_base=base, activation="gelu",
                        backend="reference")
    h = inp["x"].transpose(1, 2)  # [B, D, T]
    for level in range(L):
        d = base**level
        a = F.conv1d(F.pad(h, ((K - 1) * d, 0)), inp["weight"][level][:, None, :], inp["bias"][level],
                     dilation=d, groups=D)
        h = h + (F.gelu(a) if level < L - 1 else a)
    assert_close("reference vs conv1d", y, h.transpose(1, 2), 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_equals_separate_sequences(backend, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    cu = torch.tensor([0, 5, 5, 70, 100], dtype=torch.int32, device=dev)  # includes an empty sequence
    L, K, base, D = 2, 3, 4, 12
    S = state_size(L, K, base)
    inputs = _inputs(1, 100, D, L, K, base, dev, n_states=4)
    gos = [torch.randn(1, 100, D, device=dev), torch.randn(4, D, S, device=dev)]
    kw = dict(dilation_base=base, output_final_state=True)
    out, grads = forward_backward(dilated_conv, inputs, gos, backend=backend, cu_seqlens=cu, **kw)
    ref_out, ref_grads = forward_backward(dilated_conv, inputs, gos, backend="reference", cu_seqlens=cu, **kw)
    assert_all_close(f"{backend} varlen", out, ref_out, grads, ref_grads, 1e-5)
    # and the reference itself: each sequence alone
    for n in range(4):
        s, e = int(cu[n]), int(cu[n + 1])
        if e == s:
            assert_close("empty sequence keeps its state", ref_out[1][n], inputs["initial_state"][n], 0.0)
            continue
        y, f = dilated_conv(inputs["x"][:, s:e], inputs["weight"], inputs["bias"],
                            initial_state=inputs["initial_state"][n:n + 1], backend="reference", **kw)
        assert_close(f"sequence {n}", ref_out[0][:, s:e], y, 1e-6)
        assert_close(f"sequence {n} state", ref_out[1][n:n + 1], f, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    L, K, base = 2, 3, 2
    inputs = _inputs(1, 50, 20, L, K, base, dev, dtype=dtype)
    gos = [torch.randn(1, 50, 20, device=dev), torch.randn(1, 20, state_size(L, K, base), device=dev)]
    kw = dict(dilation_base=base, output_final_state=True)
    out, grads = forward_backward(dilated_conv, inputs, gos, backend=backend, **kw)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    ref = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    ref_out, ref_grads = forward_backward(dilated_conv, ref, gos, backend="reference", **kw)
    assert_all_close(f"{backend} {dtype}", out, ref_out, grads, ref_grads, TOL[dtype], 2 * TOL[dtype])


@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_prefix_then_steps_equals_full(backend, device, triton_device):
    """Prefix forward (final state -> ring buffer), then one token at a time = the full forward; and two
    calls chained through initial_state = one call."""
    dev = triton_device if backend == "triton" else device
    B, T, D, L, K, base, pre = 2, 45, 9, 3, 3, 2, 17
    inp = _inputs(B, T, D, L, K, base, dev, h0=False)
    kw = dict(dilation_base=base, activation="silu", residual=True)
    with torch.no_grad():
        full, _ = dilated_conv(inp["x"], inp["weight"], inp["bias"], backend="reference", **kw)
        y1, st = dilated_conv(inp["x"][:, :pre], inp["weight"], inp["bias"], output_final_state=True,
                              backend=backend, **kw)
        y2, _ = dilated_conv(inp["x"][:, pre:], inp["weight"], inp["bias"], initial_state=st, backend=backend, **kw)
        assert_close("chained", torch.cat([y1, y2], 1), full, 1e-5)
        ring = state_to_ring(st, pre, K, base)
        assert_close("ring round trip", ring_to_state(ring, pre, K, base), st, 0.0)
        steps = [dilated_conv_step(inp["x"][:, t], inp["weight"], inp["bias"], ring, t, **kw) for t in range(pre, T)]
    assert_close("prefix + steps", torch.cat([y1, torch.stack(steps, 1)], 1), full, 1e-5)


def test_step_from_empty_ring_with_per_row_positions(device):
    """Rows at different positions (a [B] position tensor), starting from a zero ring."""
    D, L, K, base, T = 4, 2, 2, 3, 12
    inp = _inputs(2, T, D, L, K, base, device, h0=False)
    full, _ = dilated_conv(inp["x"], inp["weight"], inp["bias"], dilation_base=base, backend="reference")
    ring = torch.zeros(2, D, state_size(L, K, base), device=device)
    _, st = dilated_conv(inp["x"][1:, :5], inp["weight"], inp["bias"], dilation_base=base, output_final_state=True)
    ring[1:] = state_to_ring(st, 5, K, base)  # row 1 is 5 tokens ahead of row 0
    outs = []
    for t in range(T - 5):
        pos = torch.tensor([t, t + 5], device=device)
        x_t = torch.stack([inp["x"][0, t], inp["x"][1, t + 5]])
        outs.append(dilated_conv_step(x_t, inp["weight"], inp["bias"], ring, pos, dilation_base=base))
    outs = torch.stack(outs, 1)
    assert_close("row 0", outs[0], full[0, :T - 5], 1e-5)
    assert_close("row 1", outs[1], full[1, 5:], 1e-5)


def test_receptive_field(device):
    """A change at token s reaches exactly the outputs s .. s + receptive_field - 1 (K = base: no gaps)."""
    L, K, base, T, s = 3, 3, 3, 80, 10
    rf = receptive_field(L, K, base)
    assert rf == 27
    inp = _inputs(1, T, 3, L, K, base, device, h0=False)
    inp["weight"] = inp["weight"].abs() + 0.1  # no accidental cancellation
    y1, _ = dilated_conv(inp["x"], inp["weight"], None, dilation_base=base, activation=None, backend="torch")
    inp["x"][0, s] += 1.0
    y2, _ = dilated_conv(inp["x"], inp["weight"], None, dilation_base=base, activation=None, backend="torch")
    changed = ((y1 - y2).abs().amax(-1)[0] > 0).nonzero().flatten().tolist()
    assert changed == list(range(s, s + rf))


def test_bad_inputs_name_the_argument():
    x, w = torch.randn(2, 8, 4), torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"dilated_conv: x must have 3 dims"):
        dilated_conv(x[0], w)
    with pytest.raises(ValueError, match=r"dilated_conv: weight has shape \[2, 5, 3\], expected \[L, D, K\]"):
        dilated_conv(x, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"dilated_conv: bias has shape \[3, 4\]"):
        dilated_conv(x, w, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"dilation_base must be an int >= 1, got 0"):
        dilated_conv(x, w, dilation_base=0)
    with pytest.raises(ValueError, match=r"activation must be one of"):
        dilated_conv(x, w, activation="tanh")
    with pytest.raises(ValueError, match=r"initial_state has shape \[2, 4, 5\], expected \[2, 4, 6\]"):
        dilated_conv(x, w, initial_state=torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"cu_seqlens .*batch size 1"):
        dilated_conv(x, w, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(TypeError, match=r"x has dtype torch.int64"):
        dilated_conv(x.long(), w)
    with pytest.raises(ValueError, match=r"at least one token"):
        dilated_conv(x[:, :0], w)
    with pytest.raises(ValueError, match=r"ring has shape"):
        dilated_conv_step(x[:, 0], w, None, torch.zeros(2, 4, 5), 0)
    with pytest.raises(ValueError, match=r"position must be >= 0"):
        dilated_conv_step(x[:, 0], w, None, torch.zeros(2, 4, 6), -1)


@pytest.mark.slow
def test_dilated_conv_kernels_compile_for_hopper():
    """Without a GPU: compile the fused forward and backward kernels for sm_90 (H100/H200)."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "compile_dilated_conv_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and "failed 0" in res.stdout, res.stdout[-4000:] + res.stderr[-4000:]
