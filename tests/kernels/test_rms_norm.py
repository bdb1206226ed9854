"""rms_norm: every backend against the fp32 reference, outputs and gradients, at awkward shapes."""

import pytest
import torch

from seqzoo.kernels import rms_norm
from seqzoo.kernels.rms_norm import rms_norm_reference
from seqzoo.kernels.testing import assert_all_close, forward_backward

SHAPES = [(1, 1, 16), (2, 7, 60), (3, 33, 100), (2, 5, 257)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _inputs(shape, dtype, gated, weighted, device):
    x = torch.randn(shape, device=device).to(dtype)
    w = (1 + 0.3 * torch.randn(shape[-1], device=device)).to(dtype) if weighted else None
    g = torch.randn(shape, device=device).to(dtype) if gated else None
    return {"x": x, "weight": w, "gate": g}


def _reference(inputs, dy):
    """fp32 reference on fp32 copies of the inputs: the ground truth for every dtype."""
    ref_in = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    return forward_backward(lambda x, weight, gate: rms_norm_reference(x, weight, gate), ref_in, [dy.float()])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gated", [False, True])
def test_torch_matches_reference(shape, gated, nan_empty):
    inputs = _inputs(shape, torch.float32, gated, True, "cpu")
    dy = torch.randn(shape)
    ref_out, ref_grads = _reference(inputs, dy)
    out, grads = forward_backward(lambda **kw: rms_norm(**kw, backend="torch"), inputs, [dy])
    assert_all_close("torch", out, ref_out, grads, ref_grads, TOL[torch.float32])


# fp32 at every shape; the low-precision dtypes at one awkward shape (the interpreter is slow)
CASES = [(s, torch.float32) for s in SHAPES] + [(SHAPES[1], torch.bfloat16), (SHAPES[1], torch.float16)]


@pytest.mark.triton
@pytest.mark.parametrize("shape,dtype", CASES)
@pytest.mark.parametrize("gated,weighted", [(False, True), (True, True), (False, False)])
def test_triton_matches_reference(shape, dtype, gated, weighted, triton_device, nan_empty):
    inputs = _inputs(shape, dtype, gated, weighted, triton_device)
    dy = torch.randn(shape, device=triton_device).to(dtype)
    ref_out, ref_grads = _reference(inputs, dy)
    out, grads = forward_backward(lambda **kw: rms_norm(**kw, backend="triton"), inputs, [dy])
    assert out[0].dtype == dtype
    assert_all_close(f"triton {dtype}", out, ref_out, grads, ref_grads, TOL[dtype])


def test_output_is_actually_normalized():
    x = torch.randn(4, 64) * 7 + 3
    y = rms_norm(x, None, backend="torch")
    rms = y.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones(4), atol=1e-4)


def test_errors_name_the_argument():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match="gate"):
        rms_norm(x, torch.ones(8), gate=torch.randn(2, 9))
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        rms_norm(torch.ones(2, 8, dtype=torch.long), None)
    with pytest.raises(ValueError, match="backend must be one of"):
        rms_norm(x, None, backend="cuda")
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, None, eps=-1.0)


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("SEQZOO_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SEQZOO_BACKEND"):
        rms_norm(torch.randn(2, 8), None)
    monkeypatch.setenv("SEQZOO_BACKEND", "reference")
    y = rms_norm(torch.randn(2, 8), None)
    assert y.shape == (2, 8)
