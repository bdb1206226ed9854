"""seqzoo.kernels._chunk: the shared chunking helpers (padding, varlen pack/unpack, chunk tables, l2 norm)."""

import torch

from seqzoo.kernels import _chunk as C


def test_pad_and_unpad_time():
    x = torch.randn(2, 5, 3)
    y = C.pad_time(x, 4)
    assert y.shape == (2, 8, 3) and torch.equal(y[:, :5], x) and y[:, 5:].abs().sum() == 0
    assert C.pad_time(x, 5) is x
    assert torch.equal(C.unpad_time(y, 5), x)
    z = C.pad_time(torch.randn(2, 3, 7), 4, dim=-1, value=1.0)
    assert z.shape == (2, 3, 8) and (z[..., 7] == 1).all()


def test_unpack_pack_round_trip_and_gradient():
    cu = torch.tensor([0, 3, 3, 10, 74], dtype=torch.int32)
    x = torch.randn(1, 74, 2, 5, requires_grad=True)
    y = C.unpack_varlen(x, cu, multiple=16)
    assert y.shape == (4, 64, 2, 5)
    assert torch.equal(y[2, :7], x[0, 3:10]) and y[2, 7:].abs().sum() == 0 and y[1].abs().sum() == 0
    z = C.pack_varlen(y, cu)
    assert torch.equal(z, x)
    z.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_chunk_tables():
    cu = torch.tensor([0, 3, 3, 10, 74])
    assert C.chunk_indices(cu, 16).tolist() == [[0, 0], [2, 0], [3, 0], [3, 1], [3, 2], [3, 3]]
    assert C.chunk_offsets(cu, 16).tolist() == [0, 1, 1, 2, 6]
    assert C.chunk_indices(cu, 16).dtype == torch.int32
    assert C.uniform_cu_seqlens(3, 7).tolist() == [0, 7, 14, 21]
    assert C.ceil_div(7, 4) == 2 and C.ceil_div(8, 4) == 2 and C.ceil_div(0, 4) == 0
    assert C.seq_lens(cu).tolist() == [3, 0, 7, 64]


def test_l2_normalize():
    x = torch.randn(4, 8, dtype=torch.bfloat16) * 5
    y = C.l2_normalize(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), torch.ones(4), atol=1e-2, rtol=0)


def test_varlen_tables_from_a_host_copy():
    cu = torch.tensor([0, 3, 3, 10, 74], dtype=torch.int32)
    assert C.num_chunks(cu, 16) == 6
    assert C.chunk_indices(cu, 16, num_chunks=6).tolist() == C.chunk_indices(cu, 16).tolist()
    cu_dev, tab, offs = C.varlen_chunk_tables(cu.to(torch.int64), 16, cu_seqlens_cpu=cu)
    assert cu_dev.dtype == torch.int32 and cu_dev.tolist() == cu.tolist()
    assert tab.tolist() == [[0, 0], [2, 0], [3, 0], [3, 1], [3, 2], [3, 3]] and offs.tolist() == [0, 1, 1, 2, 6]
    # without the host copy the same tables come from one read of cu_seqlens
    assert C.varlen_chunk_tables(cu, 16)[1].tolist() == tab.tolist()
    x = torch.randn(1, 74, 3)
    assert torch.equal(C.unpack_varlen(x, cu, multiple=16, longest=64), C.unpack_varlen(x, cu, multiple=16))
