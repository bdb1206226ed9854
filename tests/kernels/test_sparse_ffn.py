"""sparse_ffn: the gather-based torch path and the Triton kernels against the dense computation with zeros
(outputs and gradients), with rows of different survivor counts (one with none), low precision, errors."""

import pytest
import torch

from seqzoo.kernels.sparse_ffn import sparse_ffn, sparse_ffn_reference
from seqzoo.kernels.statistical_topk import statistical_topk
from seqzoo.kernels.testing import assert_all_close, assert_close, forward_backward

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


def _inputs(lead, F, Dv, Dm, dtype, device, empty_row=True):
    a = statistical_topk(torch.randn(*lead, F), fraction=0.1)  # ~10% nonzero, like the predictor's output
    if empty_row:
        a.view(-1, F)[-1] = 0  # a token with no survivor at all
    return {
        "a": a.to(device).to(dtype),
        "x": torch.randn(*lead, Dv).to(device).to(dtype),
        "w_value": (torch.randn(F, Dv) / Dv**0.5).to(device).to(dtype),
        "w_down": (torch.randn(F, Dm) / F**0.5).to(device).to(dtype),
    }


def _reference(inputs, go):
    return forward_backward(sparse_ffn_reference, {k: v.float() for k, v in inputs.items()}, [go.float()])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead,F,Dv,Dm", [((1,), 100, 60, 40), ((3,), 257, 60, 72), ((2, 5), 64, 20, 33)])
def test_matches_dense_with_zeros(backend, lead, F, Dv, Dm, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    inputs = _inputs(lead, F, Dv, Dm, torch.float32, dev, empty_row=len(lead) > 1 or lead[0] > 1)
    go = torch.randn(*lead, Dm, device=dev)
    out, grads = forward_backward(sparse_ffn, inputs, [go], backend=backend)
    ref_out, ref_grads = _reference(inputs, go)
    assert_all_close(f"{backend} {lead} F={F}", out, ref_out, grads, ref_grads, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_one_inference(backend, device, triton_device):
    """The decoding call: one token, no autograd (the torch path sums W_down rows with embedding_bag)."""
    dev = triton_device if backend == "triton" else device
    inputs = _inputs((1,), 300, 48, 64, torch.float32, dev, empty_row=False)
    with torch.no_grad():
        o = sparse_ffn(**inputs, backend=backend)
    assert_close(f"{backend} inference", o, sparse_ffn_reference(**inputs), 1e-6)
    inputs["a"].zero_()
    with torch.no_grad():
        assert torch.equal(sparse_ffn(**inputs, backend=backend), torch.zeros(1, 64, device=dev))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    inputs = _inputs((4,), 130, 40, 24, dtype, dev)
    go = torch.randn(4, 24, device=dev)
    out, grads = forward_backward(sparse_ffn, inputs, [go], backend=backend)
    assert out[0].dtype == dtype
    ref_out, ref_grads = _reference(inputs, go)
    assert_all_close(f"{backend} {dtype}", out, ref_out, grads, ref_grads, 1e-2, 2e-2)


def test_only_survivor_rows_matter():
    """Changing the weights of a neuron that no token selected changes nothing."""
    inputs = _inputs((3,), 80, 16, 16, torch.float32, "cpu")
    unused = int((inputs["a"] != 0).any(0).logical_not().nonzero()[0])
    o1 = sparse_ffn(**inputs, backend="torch")
    inputs["w_value"][unused] += 100.0
    inputs["w_down"][unused] -= 100.0
    assert torch.equal(o1, sparse_ffn(**inputs, backend="torch"))


def test_errors_name_the_argument():
    a, x = torch.randn(2, 10), torch.randn(2, 6)
    wv, wd = torch.randn(10, 6), torch.randn(10, 4)
    with pytest.raises(ValueError, match="share their leading dims"):
        sparse_ffn(a, x[:1], wv, wd)
    with pytest.raises(ValueError, match=r"w_value has shape \[10, 5\], expected \[10, 6\]"):
        sparse_ffn(a, x, wv[:, :5], wd)
    with pytest.raises(ValueError, match=r"w_down has shape \[9, 4\]"):
        sparse_ffn(a, x, wv, wd[:9])
    with pytest.raises(TypeError, match="w_down has dtype torch.float16"):
        sparse_ffn(a, x, wv, wd.half())
    with pytest.raises(TypeError, match="a has dtype torch.int64"):
        sparse_ffn(a.long(), x, wv, wd)
