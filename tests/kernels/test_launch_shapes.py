"""What the interpreter cannot show: host syncs, launch grids and 64-bit offsets at sizes too big to allocate.

- Dense calls of every chunked op make no device->host read and no host->device copy: the launchers run on
  meta tensors with every Triton launch intercepted (``seqzoo.bench.compile_report.capture_launches``) and
  ``Tensor.item / .cpu / .tolist / .to`` patched to fail on a cross-device transfer. Packed calls with
  ``cu_seqlens_cpu`` make none either.
- At 8M tokens (H 16, D 128) and with 8192 packed sequences every grid stays inside CUDA's limits
  (x < 2^31, y and z <= 65535), checked on meta tensors (nothing is allocated).
- The index helpers every kernel uses (``chunk_span``, ``chunk_locate``, ``seq_span``) return int64 offsets
  that are exact where int32 would wrap (run in the interpreter on scalar arguments).
- The torch paths trace under ``torch._dynamo.explain`` without a graph break for dense inputs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from seqzoo.bench.compile_report import capture_launches

GRID_X_MAX, GRID_YZ_MAX = 2**31 - 1, 65535


@contextlib.contextmanager
def no_host_transfer():
    """Fail on any device->host read (``item``, ``tolist``, ``cpu``, ``to(cpu)``, ``bool``) of a non-CPU
    tensor and on any host->device copy (``to``/``copy_`` from CPU, ``torch.tensor(..., device=...)``)."""
    T = torch.Tensor
    saved = {n: getattr(T, n) for n in ("item", "tolist", "cpu", "to", "copy_", "__bool__", "numpy")}
    saved_tensor = torch.tensor

    def off_cpu(t):
        return isinstance(t, torch.Tensor) and t.device.type != "cpu"

    def guard(name):
        def f(self, *a, **k):
            if off_cpu(self):
                raise AssertionError(f"host transfer: Tensor.{name}() on a {self.device} tensor")
            return saved[name](self, *a, **k)
        return f

    def to(self, *a, **k):
        out = saved["to"](self, *a, **k)
        if out.device != self.device and (self.device.type == "cpu" or out.device.type == "cpu"):
            raise AssertionError(f"host transfer: Tensor.to from {self.device} to {out.device}")
        return out

    def copy_(self, src, *a, **k):
        if src.device != self.device and "cpu" in (src.device.type, self.device.type):
            raise AssertionError(f"host transfer: copy_ from {src.device} to {self.device}")
        return saved["copy_"](self, src, *a, **k)

    def tensor(data, *a, device=None, **k):
        if device is not None and torch.device(device).type != "cpu":
            raise AssertionError(f"host transfer: torch.tensor(..., device={device})")
        return saved_tensor(data, *a, device=device, **k)

    for n in ("item", "tolist", "cpu", "__bool__", "numpy"):
        setattr(T, n, guard(n))
    T.to, T.copy_, torch.tensor = to, copy_, tensor
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(T, n, f)
        torch.tensor = saved_tensor


def _leaf(*shape, dtype=torch.bfloat16, device="meta"):
    return torch.empty(*shape, dtype=dtype, device=device).requires_grad_(True)


def _run_op(op, B, T, H, D, cu=None, cu_cpu=None):
    """Forward + backward of the Triton path of ``op`` on meta tensors; returns the captured launches."""
    from seqzoo.kernels import block_attention, delta_rule, linear_attention

    q, k, v = (_leaf(B, T, H, D) for _ in range(3))
    with capture_launches() as recs:
        if op == "delta_rule":
            beta = _leaf(B, T, H)
            h0 = _leaf(B if cu is None else cu.numel() - 1, H, D, D, dtype=torch.float32)
            o, ht = delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                               cu_seqlens_cpu=cu_cpu, backend="triton")
            torch.autograd.grad([o, ht], [q, k, v, beta, h0], [torch.ones_like(o), torch.ones_like(ht)])
        elif op == "linear_attention":
            h0 = _leaf(B if cu is None else cu.numel() - 1, H, D, D, dtype=torch.float32)
            decay = -torch.ones(H, device="meta")
            o, ht = linear_attention(q, k, v, decay=decay, initial_state=h0, output_final_state=True,
                                     cu_seqlens=cu, cu_seqlens_cpu=cu_cpu, backend="triton")
            torch.autograd.grad([o, ht], [q, k, v, h0], [torch.ones_like(o), torch.ones_like(ht)])
        else:
            o = block_attention(q, k, v, block_size=64, cu_seqlens=cu, cu_seqlens_cpu=cu_cpu, backend="triton")
            torch.autograd.grad([o], [q, k, v], [torch.ones_like(o)])
    return recs


def _meta_device_ok():
    """The public ops check devices; meta tensors must pass resolve_backend('triton') in the interpreter."""
    from seqzoo.kernels._backend import interpreter_active

    return interpreter_active()


pytestmark = pytest.mark.skipif(not _meta_device_ok(), reason="meta-tensor launches need TRITON_INTERPRET=1")

OPS = ["delta_rule", "linear_attention", "block_attention"]


@pytest.mark.parametrize("op", OPS)
def test_dense_path_makes_no_host_transfer(op):
    with no_host_transfer():
        recs = _run_op(op, B=2, T=300, H=4, D=64)
    assert len(recs) >= 3, [r.name for r in recs]  # forward and backward kernels were launched
    for r in recs:  # dense launches pass no offsets / tables at all
        assert r.kwargs.get("IS_VARLEN") is False, (r.name, r.kwargs.get("IS_VARLEN"))


def test_no_host_transfer_guard_catches_a_sync():
    x = torch.zeros(3, device="meta")
    with no_host_transfer(), pytest.raises(AssertionError, match="host transfer"):
        x.sum().item()
    with no_host_transfer(), pytest.raises(AssertionError, match="host transfer"):
        torch.zeros(3).to("meta")


@pytest.mark.parametrize("op", OPS)
def test_varlen_with_host_copy_makes_no_host_transfer(op):
    cu_cpu = torch.tensor([0, 7, 7, 200, 300], dtype=torch.int32)
    cu = torch.empty(5, dtype=torch.int32, device="meta")  # the device copy (values unknown to the host)
    with no_host_transfer():
        recs = _run_op(op, B=1, T=300, H=4, D=64, cu=cu, cu_cpu=cu_cpu)
    assert any(r.kwargs.get("IS_VARLEN") is True for r in recs)


def _check_grids(recs):
    assert recs
    for r in recs:
        for cfg in r.configs():
            x, y, z = r.grid_for(cfg)
            assert 0 < x <= GRID_X_MAX and y <= GRID_YZ_MAX and z <= GRID_YZ_MAX, (r.name, (x, y, z))


@pytest.mark.parametrize("op", OPS)
def test_grids_fit_at_8m_tokens(op):
    """B1 T 2^23 H16 D128: 131072 chunks of 64 (above 65535, so chunks must be on grid x)."""
    recs = _run_op(op, B=1, T=2**23, H=16, D=128)
    _check_grids(recs)
    assert max(r.grid_for(r.configs()[0])[0] for r in recs) >= 2**17


@pytest.mark.parametrize("op", ["delta_rule", "linear_attention"])
def test_grids_fit_with_8192_sequences(op):
    """8192 packed sequences x 16 heads = 131072 sequential programs: on grid x."""
    n = 8192
    cu_cpu = torch.arange(n + 1, dtype=torch.int32) * 100
    cu = torch.empty(n + 1, dtype=torch.int32, device="meta")
    recs = _run_op(op, B=1, T=n * 100, H=16, D=128, cu=cu, cu_cpu=cu_cpu)
    _check_grids(recs)


# ----------------------------------------------------------------------------------------------
# int64 index helpers at sizes where int32 wraps
# ----------------------------------------------------------------------------------------------


import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from seqzoo.kernels._triton_utils import chunk_locate, chunk_span, seq_span  # noqa: E402


@triton.jit
def _probe(out, tab, cu, coff, i_c, T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
           IS_VARLEN: tl.constexpr):
    """Stores what the kernels compute from the helpers, for one program index ``i_c`` (an int32 argument,
    like ``tl.program_id``)."""
    i_n, t0, L = chunk_span(tab, cu, i_c, BT, T, IS_VARLEN)
    _, bos, eos, i_t = chunk_locate(tab, cu, i_c, BT, T, IS_VARLEN)
    sb, se, sc = seq_span(cu, coff, i_n, BT, T, IS_VARLEN)
    tl.store(out + 0, i_n)
    tl.store(out + 1, t0 * H * K)  # the token offset of the chunk's first row in a [*, H, K] tensor
    tl.store(out + 2, L)
    tl.store(out + 3, (sc + i_t) * H * K * K)  # the chunk's state offset in an [NC, H, K, K] buffer
    tl.store(out + 4, eos - bos)
    tl.store(out + 5, se - sb)


@pytest.mark.parametrize("varlen", [False, True])
def test_index_helpers_are_int64_where_int32_wraps(varlen):
    H, K, BT = 16, 128, 64
    out = torch.zeros(6, dtype=torch.int64)
    if varlen:
        # 3 sequences; the last one starts at 2^30 tokens and 2^24 chunks (only tiny tables are allocated:
        # program 2 is that sequence's chunk 15)
        cu = torch.tensor([0, 2**29, 2**30, 2**30 + 1000], dtype=torch.int32)
        coff = torch.tensor([0, 2**23, 2**24, 2**24 + 16], dtype=torch.int32)
        tab = torch.tensor([[0, 0], [1, 0], [2, 15]], dtype=torch.int32)
        i_c = 2
        T = 0
        n, t0, length, seq_len, c_glob = 2, 2**30 + 15 * BT, 1000 - 15 * BT, 1000, 2**24 + 15
    else:
        T = 3 * 2**20 + 5  # tokens per sequence
        nt = -(-T // BT)
        i_c = 5 * nt - 1  # the last chunk of sequence 4
        tab = cu = coff = None
        n, t0, length, seq_len, c_glob = 4, 4 * T + (nt - 1) * BT, T - (nt - 1) * BT, T, i_c
    _probe[(1,)](out, tab, cu, coff, i_c, T, H=H, K=K, BT=BT, IS_VARLEN=varlen)
    expect = [n, t0 * H * K, length, c_glob * H * K * K, seq_len, seq_len]
    assert out.tolist() == expect
    assert expect[1] > 2**31 and expect[3] > 2**31  # the point: int32 arithmetic would have wrapped


# ----------------------------------------------------------------------------------------------
# torch paths under torch.compile: no graph break for dense inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_torch_path_has_no_graph_break(op):
    from seqzoo.kernels import block_attention, delta_rule, linear_attention

    torch._dynamo.reset()
    B, T, H, D = 1, 70, 2, 16
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    if op == "delta_rule":
        beta = torch.rand(B, T, H)

        def fn(q, k, v, beta):
            return delta_rule(q, k, v, beta, output_final_state=True, backend="torch")
        args = (q, k, v, beta)
    elif op == "linear_attention":
        def fn(q, k, v):
            return linear_attention(q, k, v, decay=-torch.ones(H), output_final_state=True, backend="torch")
        args = (q, k, v)
    else:
        def fn(q, k, v):
            return block_attention(q, k, v, block_size=32, backend="torch")
        args = (q, k, v)
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1
