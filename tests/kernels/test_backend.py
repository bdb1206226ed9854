"""The shared kernel contract: backend resolution, input checks and the test helpers themselves."""

import math

import pytest
import torch

from seqzoo.kernels import _backend as B
from seqzoo.kernels import testing as T


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("SEQZOO_BACKEND", raising=False)
    assert B.resolve_backend("auto", torch.device("cpu"), "op") == "torch"


def test_env_override(monkeypatch):
    monkeypatch.setenv("SEQZOO_BACKEND", "reference")
    assert B.resolve_backend("auto", torch.device("cpu"), "op") == "reference"
    # an explicit choice wins over the environment
    assert B.resolve_backend("torch", torch.device("cpu"), "op") == "torch"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        B.resolve_backend("triton", torch.device("cpu"), "my_op")


def test_check_tensor_messages():
    with pytest.raises(ValueError, match=r"my_op: q must have 4 dims \[B, T, H, D\], got shape \[2, 3\]"):
        B.check_tensor("my_op", "q", torch.zeros(2, 3), shape=(None, None, None, None), layout="[B, T, H, D]")
    with pytest.raises(ValueError, match=r"v has shape \[2, 3, 4\], expected \[2, 3, 5\]"):
        B.check_tensor("my_op", "v", torch.zeros(2, 3, 4), shape=(2, 3, 5))
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        B.check_tensor("my_op", "k", [1, 2])


def test_check_cu_seqlens():
    good = torch.tensor([0, 3, 7], dtype=torch.int32)
    assert B.check_cu_seqlens("op", good, 1, 7) is good
    with pytest.raises(ValueError, match="batch size 1"):
        B.check_cu_seqlens("op", good, 2, 7)
    with pytest.raises(ValueError, match="end at T=8"):
        B.check_cu_seqlens("op", good, 1, 8)
    with pytest.raises(ValueError, match="non-decreasing"):
        B.check_cu_seqlens("op", torch.tensor([0, 5, 3, 7]), 1, 7)
    with pytest.raises(TypeError, match="cu_seqlens has dtype"):
        B.check_cu_seqlens("op", torch.tensor([0.0, 7.0]), 1, 7)


def test_rel_err_and_assert_close():
    a = torch.ones(10)
    assert T.rel_err(a, a.clone()) == 0.0
    assert math.isclose(T.rel_err(a * 1.1, a), 0.1, rel_tol=1e-6)
    assert T.rel_err(torch.full((3,), float("nan")), torch.ones(3)) == math.inf
    with pytest.raises(AssertionError, match="relative error"):
        T.assert_close("x", a * 1.1, a, 1e-3)


def test_nan_empty_poisons_and_restores():
    with T.nan_empty():
        assert torch.isnan(torch.empty(4)).all()
        assert torch.isnan(torch.empty_like(torch.zeros(3))).all()
        assert torch.isnan(torch.zeros(2).new_empty(5)).all()
        assert (torch.empty(3, dtype=torch.int32) == torch.iinfo(torch.int32).max).all()
    assert torch.empty is not None and not hasattr(torch.empty, "__wrapped__")
    t = torch.empty(1000)  # restored: no NaN fill (the allocator may hold anything, so only check it ran)
    assert t.shape == (1000,)


def test_forward_backward_catches_a_wrong_gradient():
    """The helper must detect a gradient that is wrong while the output is right."""

    class Bad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 3  # wrong on purpose

    x = torch.randn(5)
    dy = torch.randn(5)
    out, grads = T.forward_backward(lambda x: Bad.apply(x), {"x": x}, [dy])
    ref_out, ref_grads = T.forward_backward(lambda x: x * 2, {"x": x}, [dy])
    T.assert_close("out", out[0], ref_out[0], 1e-6)
    with pytest.raises(AssertionError, match=r"grad\[x\]"):
        T.assert_all_close("bad", out, ref_out, grads, ref_grads, 1e-6)


def test_check_varlen_host_copy():
    cu = torch.tensor([0, 3, 7])
    assert B.check_varlen("op", None, 2, 7) is None
    assert B.check_varlen("op", cu, 1, 7, cu_seqlens_cpu=cu.clone()).tolist() == [0, 3, 7]
    with pytest.raises(ValueError, match="cu_seqlens_cpu was given without cu_seqlens"):
        B.check_varlen("op", None, 1, 7, cu_seqlens_cpu=cu)
    with pytest.raises(ValueError, match="cu_seqlens_cpu has shape"):
        B.check_varlen("op", cu, 1, 7, cu_seqlens_cpu=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="must start at 0 and end at T=7"):
        B.check_varlen("op", cu, 1, 7, cu_seqlens_cpu=torch.tensor([0, 3, 8]))  # the host copy is what is checked


def test_autotune_trials_expose_an_in_place_kernel(triton_device):
    """The suite's autotune emulation (conftest) runs one timing trial before the real launch, as a GPU's
    autotuner benchmarks configs on the real buffers: a kernel that adds into its output in place gives +2
    without restore_value (on a GPU, more than +1: every benchmark repetition adds), and +1 with it."""
    on_gpu = triton_device.type == "cuda"
    import triton
    import triton.language as tl

    def make(restore):
        @triton.autotune(configs=B.autotune_configs({}, num_warps=[4, 8], num_stages=[1]), key=["N"],
                         restore_value=["x"] if restore else None)
        @triton.jit
        def add_one(x, N: tl.constexpr):
            o = tl.arange(0, N)
            tl.store(x + o, tl.load(x + o) + 1.0)
        return add_one

    for restore in (False, True):
        x = torch.zeros(16, device=triton_device)
        make(restore)[(1,)](x, N=16)  # conftest's session fixture has the emulation on under the interpreter
        if restore:
            assert torch.all(x == 1.0), (restore, x)
        elif on_gpu:
            assert torch.all(x > 1.0) and bool((x == x[0]).all()), (restore, x)
        else:
            assert torch.all(x == 2.0), (restore, x)
