"""GPU only (marker ``gpu``; skipped without CUDA, run first by scripts/gpu_check.sh): the shape class the
benchmarks time, K = V = 128, bf16, H = 16, T = 2048, and a packed (varlen) batch, for delta_rule,
linear_attention and block_attention. Outputs and gradients of the Triton path against the same op's torch
path run in fp32 (the torch paths are checked against the step-by-step references at small shapes in the
CPU suite), with every torch.empty NaN-poisoned so that an unwritten tile fails."""

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import block_attention, delta_rule, linear_attention
from seqzoo.kernels.testing import assert_close, forward_backward

pytestmark = [pytest.mark.gpu, pytest.mark.triton]

B, T, H, D = 2, 2048, 16, 128
CU = [0, 300, 1000, 1001, 2048, 4096]  # packed: lengths 300, 700, 1, 1047, 2048
TOL, GRAD_TOL = 3e-2, 6e-2


def _qkv(batch, length, dtype=torch.bfloat16):
    q = torch.randn(batch, length, H, D, device="cuda")
    k = F.normalize(torch.randn(batch, length, H, D, device="cuda"), dim=-1)
    v = torch.randn(batch, length, H, D, device="cuda")
    return {"q": q.to(dtype), "k": k.to(dtype), "v": v.to(dtype)}


def _compare(fn, inputs, gos, **kw):
    out, grads = forward_backward(fn, inputs, gos, backend="triton", **kw)
    ref_in = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in inputs.items()}
    ref_out, ref_grads = forward_backward(fn, ref_in, [g.float() if g is not None else None for g in gos],
                                          backend="torch", **kw)
    for i, (a, e) in enumerate(zip(out, ref_out)):
        if a is not None:
            assert_close(f"output {i}", a.float(), e, TOL)
    for name, g in grads.items():
        if g is not None:
            assert_close(f"grad {name}", g.float(), ref_grads[name], GRAD_TOL)


@pytest.mark.parametrize("varlen", [False, True])
def test_delta_rule_bench_shape(varlen, nan_empty):
    batch, length = (1, CU[-1]) if varlen else (B, T)
    n = len(CU) - 1 if varlen else batch
    ins = _qkv(batch, length)
    ins["beta"] = torch.rand(batch, length, H, device="cuda").to(torch.bfloat16)
    ins["initial_state"] = 0.1 * torch.randn(n, H, D, D, device="cuda")
    kw = {}
    if varlen:
        kw = dict(cu_seqlens=torch.tensor(CU, device="cuda", dtype=torch.int32),
                  cu_seqlens_cpu=torch.tensor(CU, dtype=torch.int32))
    gos = [torch.randn(batch, length, H, D, device="cuda").to(torch.bfloat16), torch.randn(n, H, D, D, device="cuda")]
    _compare(delta_rule, ins, gos, output_final_state=True, **kw)


@pytest.mark.parametrize("varlen", [False, True])
def test_linear_attention_bench_shape(varlen, nan_empty):
    batch, length = (1, CU[-1]) if varlen else (B, T)
    n = len(CU) - 1 if varlen else batch
    ins = _qkv(batch, length)
    ins["initial_state"] = 0.1 * torch.randn(n, H, D, D, device="cuda")
    kw = dict(decay=-torch.linspace(0.01, 0.5, H, device="cuda"))
    if varlen:
        kw.update(cu_seqlens=torch.tensor(CU, device="cuda", dtype=torch.int32),
                  cu_seqlens_cpu=torch.tensor(CU, dtype=torch.int32))
    gos = [torch.randn(batch, length, H, D, device="cuda").to(torch.bfloat16), torch.randn(n, H, D, D, device="cuda")]
    _compare(linear_attention, ins, gos, output_final_state=True, **kw)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("activation", ["softmax", "relu"])
def test_block_attention_bench_shape(varlen, activation, nan_empty):
    batch, length = (1, CU[-1]) if varlen else (B, T)
    ins = _qkv(batch, length)
    kw = dict(block_size=64, activation=activation)
    if varlen:
        kw.update(cu_seqlens=torch.tensor(CU, device="cuda", dtype=torch.int32),
                  cu_seqlens_cpu=torch.tensor(CU, dtype=torch.int32))
    gos = [torch.randn(batch, length, H, D, device="cuda").to(torch.bfloat16)]
    _compare(block_attention, ins, gos, **kw)
