"""spark_attention: the chunked torch path, the one-token decode path and the Triton kernels (interpreter)
against the dense fp32 reference, outputs and gradients: GQA, a KV-cache prefix, packed sequences, padding
keys, low precision, that the selection really is sparse, and clear errors."""

import pytest
import torch

from seqzoo.kernels.spark_attention import spark_attention, spark_attention_decode, spark_attention_reference
from seqzoo.kernels.testing import assert_all_close, assert_close, forward_backward, record_taken

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


def _inputs(B, Tq, Tk, H, Hkv, D, Dv, dtype, device):
    return {
        "q": torch.randn(B, Tq, H, D).to(device).to(dtype),
        "k": torch.randn(B, Tk, Hkv, D).to(device).to(dtype),
        "v": torch.randn(B, Tk, Hkv, Dv).to(device).to(dtype),
    }


def _reference(inputs, go, **kw):
    return forward_backward(spark_attention_reference, {k: v.float() for k, v in inputs.items()}, [go.float()],
                            **kw)


def _compare(backend, dev, B, Tq, Tk, H, Hkv, D, Dv, r, top_k, tol=1e-5, dtype=torch.float32, **kw):
    inputs = _inputs(B, Tq, Tk, H, Hkv, D, Dv, dtype, dev)
    go = torch.randn(B, Tq, H, Dv, device=dev)
    out, grads = forward_backward(spark_attention, inputs, [go], predictor_dims=r, top_k=top_k, backend=backend,
                                  **kw)
    assert out[0].dtype == dtype
    ref_out, ref_grads = _reference(inputs, go, predictor_dims=r, top_k=top_k, **kw)
    label = f"{backend} B={B} Tq={Tq} Tk={Tk} H={H}/{Hkv} D={D} r={r} k={top_k} {dtype}"
    assert_all_close(label, out, ref_out, grads, ref_grads, tol, 2 * tol)
    return inputs


# (B, Tq, Tk, H, Hkv, D, Dv, r, top_k): T = 1; T = 63 with GQA and D not a power of two; a KV-cache prefix
CASES = [(1, 1, 1, 2, 1, 16, 16, 8, 4), (2, 63, 63, 4, 2, 24, 20, 10, 8), (1, 9, 50, 2, 2, 32, 16, 12, 6)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(backend, case, device, triton_device, nan_empty):
    _compare(backend, triton_device if backend == "triton" else device, *case)


def test_torch_long_sequence_and_chunking(device, nan_empty, monkeypatch):
    """T = 100 in checkpointed chunks of 7 queries (the long-input path: chunk boundaries and recomputation
    in the backward must not matter) with top_k far below T."""
    from seqzoo.kernels.spark_attention import torch_chunk

    monkeypatch.setattr(torch_chunk, "SMALL_SCORES", 0)
    inputs = _inputs(1, 100, 100, 2, 1, 40, 40, torch.float32, device)
    go = torch.randn(1, 100, 2, 40, device=device)
    from seqzoo.kernels.spark_attention.torch_chunk import spark_attention_torch

    def chunked(q, k, v):
        return spark_attention_torch(q, k, v, 16, top_k=12, chunk_size=7)

    out, grads = forward_backward(chunked, inputs, [go])
    ref_out, ref_grads = _reference(inputs, go, predictor_dims=16, top_k=12)
    assert_all_close("torch chunk 7", out, ref_out, grads, ref_grads, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_and_padding_keys(backend, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    cu = torch.tensor([0, 20, 20, 57], dtype=torch.int32, device=dev)  # includes an empty sequence
    _compare(backend, dev, 1, 57, 57, 2, 1, 20, 16, 8, 5, cu_seqlens=cu)
    key_mask = torch.ones(2, 40, dtype=torch.bool, device=dev)
    key_mask[0, :7] = False  # left padding of the first row
    key_mask[1, 13] = False
    _compare(backend, dev, 2, 40, 40, 2, 2, 16, 16, 6, 5, key_mask=key_mask)


def test_varlen_equals_separate_sequences(device):
    cu = torch.tensor([0, 30, 64], dtype=torch.int64, device=device)
    x = _inputs(1, 64, 64, 2, 1, 16, 8, torch.float32, device)
    o = spark_attention(**x, predictor_dims=8, top_k=6, cu_seqlens=cu, backend="torch")
    parts = [spark_attention(**{n: t[:, s:e] for n, t in x.items()}, predictor_dims=8, top_k=6, backend="torch")
             for s, e in [(0, 30), (30, 64)]]
    assert_close("varlen vs separate", o, torch.cat(parts, 1), 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision(backend, device, triton_device, nan_empty):
    dev = triton_device if backend == "triton" else device
    _compare(backend, dev, 1, 40, 40, 2, 1, 32, 32, 16, 64, tol=2e-2, dtype=torch.bfloat16)
    _compare(backend, dev, 1, 40, 40, 2, 1, 32, 32, 16, 64, tol=5e-3, dtype=torch.float16)


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("Hkv,masked", [(2, False), (1, True), (1, False)])
def test_decode_step_matches_reference(Hkv, masked, native, device, monkeypatch):
    """The generation path (split cache [B, Hkv, T, *], one query) against the reference's last row; the cache
    as contiguous tensors, as ZooCache.append's views of a larger buffer, and as strided slices of one
    [B, Hkv, T, D] tensor (which take the gather fallback). On a CPU, without padding keys, the C kernel runs
    for the first two unless SEQZOO_NATIVE=0 (counted: a kernel that declined would leave the PyTorch ops to
    pass this test alone)."""
    from seqzoo.kernels.spark_attention import torch_chunk

    monkeypatch.setenv("SEQZOO_NATIVE", native)
    ran = record_taken(monkeypatch, torch_chunk, "spark_attention_decode_native")
    B, T, H, D, r = 2, 300, 2, 24, 10
    x = _inputs(B, 1, T, H, Hkv, D, 16, torch.float32, device)
    key_mask = None
    if masked:
        key_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        key_mask[1, :50] = False
    want = spark_attention_reference(x["q"], x["k"], x["v"], r, top_k=32, key_mask=key_mask)[:, 0]
    k = x["k"].transpose(1, 2)  # [B, Hkv, T, D]
    got = spark_attention_decode(x["q"][:, 0], k[..., :r].contiguous(), k[..., r:].contiguous(),
                                 x["v"].transpose(1, 2).contiguous(), top_k=32, key_mask=key_mask)
    assert_close("decode", got, want, 1e-5)
    from seqzoo.architectures.base import ZooCache

    cache = ZooCache(1)
    for t0 in range(0, T, 97):  # grown in pieces: views with head strides of the buffer's capacity
        for name, part in (("k1", k[..., :r]), ("k2", k[..., r:]), ("v", x["v"].transpose(1, 2))):
            cache.append(0, name, part[:, :, t0:t0 + 97], dim=2)
    st = cache[0]
    assert not st["k1"].is_contiguous()
    got = spark_attention_decode(x["q"][:, 0], st["k1"], st["k2"], st["v"], top_k=32, key_mask=key_mask)
    assert_close("decode from cache views", got, want, 1e-5)
    got = spark_attention_decode(x["q"][:, 0], k[..., :r], k[..., r:], x["v"].transpose(1, 2), top_k=32,
                                 key_mask=key_mask)
    assert_close("decode from strided slices", got, want, 1e-5)
    short = spark_attention_decode(x["q"][:, 0], k[:, :, :20, :r], k[:, :, :20, r:], x["v"].transpose(1, 2)[:, :, :20],
                                   top_k=32)  # fewer keys than top_k: every key counts
    want_short = spark_attention_reference(x["q"], x["k"][:, :20], x["v"][:, :20], r, top_k=32)[:, 0]
    assert_close("decode T < top_k", short, want_short, 1e-5)
    # the C kernel is asked only without key_mask (masked: only by the T < top_k call) and declines strided slices
    c_kernel = device.type == "cpu" and native == "1"
    assert ran == ([False] if masked else [c_kernel, c_kernel, False, False]), ran


def test_selection_is_sparse_and_close_to_top_k(device):
    """A query that sees 2000 keys with top_k = 100 selects about 100 of them, and keys it did not select
    do not change its output."""
    T, top_k = 2000, 100
    x = _inputs(1, 1, T, 1, 1, 64, 8, torch.float32, device)
    s1 = (x["q"][0, 0, 0, :32] @ x["k"][0, :, 0, :32].T) / 8.0
    mean, std = s1.mean(), s1.std(unbiased=False)
    from statistics import NormalDist

    selected = s1 >= mean + std * NormalDist().inv_cdf(1 - top_k / T)
    assert 70 <= int(selected.sum()) <= 130
    o1 = spark_attention(**x, predictor_dims=32, top_k=top_k, backend="torch")
    x["v"][0, ~selected] += 5.0
    o2 = spark_attention(**x, predictor_dims=32, top_k=top_k, backend="torch")
    assert torch.equal(o1, o2)
    x["v"][0, selected] += 5.0
    assert not torch.allclose(o1, spark_attention(**x, predictor_dims=32, top_k=top_k, backend="torch"))


def test_bad_inputs_name_the_argument():
    q, v = torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 8)
    with pytest.raises(ValueError, match=r"spark_attention: q must have 4 dims"):
        spark_attention(q[0], q[0], v[0], predictor_dims=4)
    with pytest.raises(ValueError, match=r"predictor_dims must be an int with 0 < predictor_dims < D = 16, got 16"):
        spark_attention(q, q, v, predictor_dims=16)
    with pytest.raises(ValueError, match=r"top_k must be a positive int, got 0"):
        spark_attention(q, q, v, predictor_dims=4, top_k=0)
    with pytest.raises(ValueError, match=r"k's head count \(3\) must divide q's \(2\)"):
        spark_attention(q, torch.randn(1, 8, 3, 16), torch.randn(1, 8, 3, 8), predictor_dims=4)
    with pytest.raises(ValueError, match=r"need Tk >= Tq"):
        spark_attention(q, q[:, :4], v[:, :4], predictor_dims=4)
    with pytest.raises(ValueError, match=r"v has shape \[1, 7, 2, 8\]"):
        spark_attention(q, q, v[:, :7], predictor_dims=4)
    with pytest.raises(TypeError, match=r"v has dtype torch.float16"):
        spark_attention(q, q, v.half(), predictor_dims=4)
    with pytest.raises(ValueError, match=r"key_mask has shape \[1, 7\]"):
        spark_attention(q, q, v, predictor_dims=4, key_mask=torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"cu_seqlens needs Tq == Tk"):
        spark_attention(q[:, :4], q, v, predictor_dims=4, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(TypeError, match=r"scale must be None or a finite float"):
        spark_attention(q, q, v, predictor_dims=4, scale=float("inf"))


def test_spark_kernels_compile_for_hopper():
    """Without a GPU: compile the statistical_topk, sparse_ffn and spark_attention kernels for sm_90."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "compile_spark_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and "failed 0" in res.stdout, res.stdout[-4000:] + res.stderr[-4000:]
