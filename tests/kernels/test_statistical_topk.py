"""statistical_topk: every backend against the fp32 reference (outputs and gradients, soft and hard), the
reference against the closed-form threshold and gradient, the survivor count against k, clear errors."""

import math
from statistics import NormalDist

import pytest
import torch

from seqzoo.kernels.statistical_topk import statistical_topk
from seqzoo.kernels.statistical_topk import quantile_multiplier, statistical_topk_reference, survivor_counts
from seqzoo.kernels.testing import assert_close, forward_backward

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]
SHAPES = [(1, 2), (3, 63), (2, 100), (4, 257)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
NEG_SENTINEL = -1e4


def _finite(y):
    """Hard-mode outputs hold -inf; compare them with the -inf replaced (after checking where they are)."""
    return torch.where(torch.isinf(y), torch.full_like(y, NEG_SENTINEL), y)


def _check(label, out, grads, ref_out, ref_grads, mode, tol):
    if mode == "hard":
        assert torch.equal(torch.isinf(out), torch.isinf(ref_out)), f"{label}: survivors differ"
    assert_close(f"{label} output", _finite(out.float()), _finite(ref_out.float()), tol)
    assert_close(f"{label} grad", grads["x"], ref_grads["x"], tol)


def _run(backend, x, dy, mode, k, **kw):
    def fn(x):
        if backend == "triton_blocked":  # the row loop with 16-column steps
            from seqzoo.kernels.statistical_topk.triton_impl import statistical_topk_triton

            return statistical_topk_triton(x, quantile_multiplier(k, x.shape[-1]), mode, block_size=16)
        return statistical_topk(x, k, mode=mode, backend=backend, **kw)

    out, grads = forward_backward(fn, {"x": x}, [dy])
    return out[0], grads


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("triton_blocked", marks=pytest.mark.triton)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_matches_reference(backend, shape, mode, device, triton_device, nan_empty):
    dev = triton_device if backend.startswith("triton") else device
    x = (torch.randn(shape) * 2 + 3).to(dev)
    dy = torch.randn(shape).to(dev)
    k = max(1, shape[-1] // 10)
    ref_out, ref_grads = _run("reference", x, dy, mode, k)
    out, grads = _run(backend, x, dy, mode, k)
    _check(f"{backend} {shape} {mode}", out, grads, ref_out, ref_grads, mode, TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_low_precision(backend, dtype, mode, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    x = torch.randn(3, 130).to(dev).to(dtype)
    dy = torch.randn(3, 130).to(dev).to(dtype)
    ref_out, ref_grads = _run("reference", x.float(), dy.float(), mode, 13)
    out, grads = _run(backend, x, dy, mode, 13)
    assert out.dtype == dtype and grads["x"].dtype == dtype
    _check(f"{backend} {dtype} {mode}", out, grads, ref_out, ref_grads, mode, TOL[dtype])


def test_reference_is_the_formula():
    """θ = mean + population std · Φ⁻¹(1 - k/d), computed here in fp64 with the standard library."""
    x = (torch.randn(5, 200) * 1.7 - 0.4).double()  # fp32 values, so x.float() is exact
    k = 16
    z = NormalDist().inv_cdf(1 - k / 200)
    assert abs(z - quantile_multiplier(k, 200)) < 1e-12 and abs(NormalDist().inv_cdf(0.92) - 1.405) < 1e-3
    for row in range(5):
        vals = x[row].tolist()
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        theta = mu + sd * z
        soft = statistical_topk_reference(x[row : row + 1].float(), z, "soft")[0]
        want = torch.tensor([max(v - theta, 0.0) for v in vals], dtype=torch.float64)
        assert torch.allclose(soft.double(), want, atol=1e-5)
        hard = statistical_topk_reference(x[row : row + 1].float(), z, "hard")[0]
        assert torch.equal(torch.isfinite(hard), torch.tensor([v >= theta for v in vals]))


def test_soft_gradient_is_the_closed_form():
    """dx_j = g_j m_j - S/d - S z (x_j - μ) / (d σ), S = Σ g m: the gradient through the mean and the std."""
    d, k = 90, 9
    x = torch.randn(4, d)
    g = torch.randn(4, d)
    _, grads = forward_backward(lambda x: statistical_topk(x, k, backend="reference"), {"x": x}, [g])
    z = quantile_multiplier(k, d)
    mu = x.mean(-1, keepdim=True)
    sd = x.std(-1, unbiased=False, keepdim=True)
    m = (x > mu + z * sd).float()
    s = (g * m).sum(-1, keepdim=True)
    want = g * m - s / d - s * z * (x - mu) / (d * sd)
    assert_close("closed-form soft gradient", grads["x"], want, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_gradient_matches_finite_differences(backend, device, triton_device):
    """The hard mode's gradient is the incoming gradient on survivors, 0 elsewhere: a small nudge of any entry
    (survivor or not, away from θ) moves the finite outputs by exactly that, the mask does not change."""
    dev = triton_device if backend == "triton" else device
    x = torch.randn(2, 50, dtype=torch.float32).to(dev)
    g = torch.randn(2, 50).to(dev)
    y, grads = _run(backend, x, g, "hard", 5)
    kept = torch.isfinite(y)
    eps = 1e-3
    for j in (int(kept[0].nonzero()[0]), int((~kept[0]).nonzero()[0])):
        xp = x.clone()
        xp[0, j] += eps
        yp = statistical_topk(xp, 5, mode="hard", backend=backend)
        assert torch.equal(torch.isfinite(yp), kept)  # the nudge does not cross θ
        fd = ((_finite(yp) - _finite(y)) * g).sum() / eps
        assert abs(fd.item() - grads["x"][0, j].item()) < 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_dim_argument(backend, device, triton_device):
    dev = triton_device if backend == "triton" else device
    x = torch.randn(2, 40, 3).to(dev)
    y = statistical_topk(x, fraction=0.1, dim=1, backend=backend)
    want = statistical_topk(x.transpose(1, 2), fraction=0.1, backend="reference").transpose(1, 2)
    assert_close("dim=1", y, want, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_row_has_finite_gradient(backend, device, triton_device):
    dev = triton_device if backend == "triton" else device
    x = torch.full((2, 33), 1.5).to(dev)
    out, grads = forward_backward(lambda x: statistical_topk(x, 3, backend=backend), {"x": x}, [torch.ones_like(x)])
    assert torch.equal(out[0], torch.zeros_like(x))
    assert torch.isfinite(grads["x"]).all()


@pytest.mark.parametrize("d", [1024, 4096])
def test_survivor_count_close_to_k_on_gaussian_rows(d):
    """The paper's claim: the count deviates from k by O(sqrt(log d / d)) relative. Checked with constant 2
    over 200 Gaussian rows (mean and spread vary per row), against exact torch.topk, which keeps k."""
    k = round(0.08 * d)
    x = torch.randn(200, d) * torch.rand(200, 1) * 5 + torch.randn(200, 1) * 3
    y = statistical_topk(x, k, backend="torch")
    counts = survivor_counts(y).float()
    rel = ((counts - k).abs() / k).mean().item()
    assert rel < 2 * math.sqrt(math.log(d) / d), rel
    exact = torch.zeros_like(x).scatter_(-1, torch.topk(x, k).indices, 1.0)
    overlap = ((y > 0).float() * exact).sum(-1) / k  # how many of the true top k survive
    assert overlap.mean().item() > 0.9


def test_errors_name_the_argument():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="exactly one of k"):
        statistical_topk(x)
    with pytest.raises(ValueError, match="exactly one of k"):
        statistical_topk(x, 2, fraction=0.2)
    with pytest.raises(ValueError, match=r"k must be an int with 0 < k < d = 10.*got 10"):
        statistical_topk(x, 10)
    with pytest.raises(ValueError, match=r"fraction must be a float in \(0, 1\), got 1.5"):
        statistical_topk(x, fraction=1.5)
    with pytest.raises(ValueError, match=r"mode must be one of \('soft', 'hard'\), got 'top'"):
        statistical_topk(x, 2, mode="top")
    with pytest.raises(ValueError, match="dim must be an int"):
        statistical_topk(x, 2, dim=2)
    with pytest.raises(ValueError, match="at least 2 entries"):
        statistical_topk(torch.randn(3, 1), fraction=0.5)
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        statistical_topk(torch.ones(2, 10, dtype=torch.long), 2)
