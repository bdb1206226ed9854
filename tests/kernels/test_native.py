"""The C kernels of CPU decoding (seqzoo.kernels._native): the build (cached under a hash, written atomically,
switched off by SEQZOO_NATIVE=0, a clear warning and the PyTorch ops without a compiler), and the two kernels
against the references: one Spark-FFN token and one Spark-Attention decoding step, at awkward shapes."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from seqzoo.kernels import _native, sparse_ffn, statistical_topk
from seqzoo.kernels.spark_attention import spark_attention_reference
from seqzoo.kernels.spark_attention.native import spark_attention_decode_native
from seqzoo.kernels.sparse_ffn.native import spark_ffn_step_native
from seqzoo.kernels.statistical_topk import quantile_multiplier
from seqzoo.kernels.testing import assert_close

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A private build cache and no library loaded yet in this process."""
    monkeypatch.setenv(_native.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(_native.ENV_SWITCH, raising=False)
    monkeypatch.setattr(_native, "_loaded", {})
    return tmp_path


def test_build_is_cached_under_a_hash_and_leaves_no_temporary_file(fresh_cache):
    lib = _native.library("sparse_ffn/spark_ffn_step.c")
    assert lib is not None
    built = sorted(p.name for p in fresh_cache.iterdir())
    assert len(built) == 1 and built[0].startswith("spark_ffn_step-") and built[0].endswith(".so")
    _native._loaded.clear()  # a new process: loads the cached file, builds nothing
    stamp = (fresh_cache / built[0]).stat().st_mtime_ns
    assert _native.library("sparse_ffn/spark_ffn_step.c") is not None
    assert (fresh_cache / built[0]).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in fresh_cache.iterdir()) == built


def _ffn_inputs(F_, r, Dv, Dm):
    x = torch.randn(r + Dv)
    return x, torch.randn(F_, r) / r**0.5 * 2, torch.randn(F_, Dv) / Dv**0.5, torch.randn(F_, Dm)


def test_without_a_compiler_the_pytorch_ops_run(fresh_cache, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_cache / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="could not be built.*PyTorch ops instead"):
        assert spark_ffn_step_native(*_ffn_inputs(50, 3, 7, 9), 1.4) is None
    assert list(fresh_cache.iterdir()) == []  # no half-written library left behind


def test_a_compiler_without_openmp_builds_a_one_thread_library(fresh_cache, monkeypatch):
    cc = fresh_cache / "cc-without-openmp"
    cc.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec cc "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    torch.manual_seed(0)
    x, w_pred, wv, wd = _ffn_inputs(3000, 7, 9, 130)
    got = spark_ffn_step_native(x, w_pred, wv, wd, quantile_multiplier(900, 3000))
    assert got is not None
    assert_close("built without OpenMP", got, _ffn_reference(x, w_pred, wv, wd, 0.3)[0], 1e-5)
    lib = next(p for p in fresh_cache.iterdir() if p.suffix == ".so")
    assert b"GOMP_" not in lib.read_bytes()


def test_switched_off(fresh_cache, monkeypatch):
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    assert _native.library("sparse_ffn/spark_ffn_step.c") is None
    assert spark_ffn_step_native(*_ffn_inputs(50, 3, 7, 9), 1.4) is None
    assert list(fresh_cache.iterdir()) == []


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """torch.get_num_threads() for the test (the C kernels split their work over that many OpenMP threads when
    it is large enough: the 2-thread cases below are)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _ffn_reference(x, w_pred, wv, wd, fraction):
    r = w_pred.shape[1]
    a = F.gelu(statistical_topk(w_pred @ x[:r], fraction=fraction, backend="reference"), approximate="tanh")
    return sparse_ffn(a[None], x[None, r:], wv, wd, backend="reference")[0], int((a != 0).sum())


# (F, r, Dv, Dm, kept fraction): F = 4096 and 3000 are split over two threads
@pytest.mark.parametrize("F_, r, Dv, Dm, fraction", [(200, 11, 37, 48, 0.08), (4096, 512, 512, 1024, 0.08),
                                                     (333, 4, 5, 3, 0.5), (2, 1, 1, 1, 0.3), (3000, 7, 9, 130, 0.3)])
def test_ffn_step_matches_the_reference(F_, r, Dv, Dm, fraction, threads):
    torch.manual_seed(F_)
    x, w_pred, wv, wd = _ffn_inputs(F_, r, Dv, Dm)
    got = spark_ffn_step_native(x, w_pred, wv, wd, quantile_multiplier(fraction * F_, F_))
    assert got is not None
    want, kept = _ffn_reference(x, w_pred, wv, wd, fraction)
    assert kept > 0
    assert_close(f"F={F_} r={r} Dv={Dv} Dm={Dm} {threads} thread(s)", got, want, 1e-5)


def test_ffn_step_without_survivors_is_zero():
    """Constant scores: std 0, nothing lies above the threshold."""
    x, _, wv, wd = _ffn_inputs(64, 3, 4, 6)
    got = spark_ffn_step_native(x, torch.zeros(64, 3), wv, wd, 1.4)
    assert got is not None and torch.equal(got, torch.zeros(6))


def test_ffn_step_declines_inputs_it_does_not_handle():
    x, w_pred, wv, wd = _ffn_inputs(50, 3, 7, 9)
    assert spark_ffn_step_native(x.double(), w_pred, wv, wd, 1.4) is None  # not fp32
    assert spark_ffn_step_native(x, torch.randn(3, 50).t(), wv, wd, 1.4) is None  # not contiguous
    assert spark_ffn_step_native(x, w_pred[:40], wv, wd, 1.4) is None  # F does not match
    assert spark_ffn_step_native(x[:9], w_pred, wv, wd, 1.4) is None  # D - r does not match Dv
    assert spark_ffn_step_native(x, w_pred, wv, wd, 1.4) is not None


def _split_cache(k, v, r, capacity):
    """``k [B, T, Hkv, D]``, ``v [B, T, Hkv, Dv]`` -> head-major k1, k2, v as views of buffers holding
    ``capacity`` rows per head (what ZooCache.append keeps)."""
    B, T, Hkv, D = k.shape
    out = []
    for part in (k[..., :r], k[..., r:], v):
        buf = torch.full((B, Hkv, capacity, part.shape[-1]), float("nan"))
        buf[:, :, :T] = part.transpose(1, 2)
        out.append(buf[:, :, :T])
    return out


# (B, T, H, Hkv, D, Dv, r, top_k): one key; fewer keys than top_k; GQA with odd dims; selection over 300 keys;
# 1500 keys (long enough for the rows to be split over threads), 5 rows
CASES = [(1, 1, 2, 1, 8, 8, 4, 4), (2, 3, 2, 2, 10, 6, 4, 8), (2, 300, 4, 2, 13, 7, 6, 32), (1, 77, 3, 3, 6, 5, 2, 5),
         (1, 1500, 5, 5, 12, 9, 6, 64)]


@pytest.mark.parametrize("B, T, H, Hkv, D, Dv, r, top_k", CASES)
def test_attention_decode_step_matches_the_reference(B, T, H, Hkv, D, Dv, r, top_k, threads):
    torch.manual_seed(T)
    q, k, v = torch.randn(B, 1, H, D), torch.randn(B, T, Hkv, D), torch.randn(B, T, Hkv, Dv)
    want = spark_attention_reference(q, k, v, r, top_k=top_k)[:, 0]  # [B, H, Dv]
    k1, k2, vc = _split_cache(k, v, r, capacity=T + 5)
    G, scale = H // Hkv, D**-0.5
    qg = q[:, 0].reshape(B, Hkv, G, D)
    s1 = (qg[..., :r] @ k1.transpose(-1, -2)) * scale  # [B, Hkv, G, T]
    z = 0.0 if T <= top_k else quantile_multiplier(top_k, T)
    got = spark_attention_decode_native(s1, qg[..., r:], k2, vc, z, T <= top_k, scale)
    assert got is not None
    assert_close(f"B={B} T={T} H={H}/{Hkv} D={D} r={r} k={top_k}", got.reshape(B, H, Dv), want, 1e-5)


def test_attention_decode_step_declines_strided_rows():
    k = torch.randn(1, 2, 10, 8)
    s1, q2 = torch.randn(1, 2, 1, 10), torch.randn(1, 2, 1, 4)
    assert spark_attention_decode_native(s1, q2, k[..., 4:], k, 1.0, False, 0.3) is None  # rows 8 apart, 4 wide
    assert spark_attention_decode_native(s1, q2, k[..., 4:].contiguous(), k, 1.0, False, 0.3) is not None


def test_attention_decode_step_keeps_the_best_keys_when_the_threshold_overshoots():
    """Half the keys score 0 and half 3: mean + std · z lies above every score, so the threshold falls back to
    the best score (all the tied best keys are selected, not none)."""
    torch.manual_seed(0)
    T, D, r = 50, 8, 4
    q, k, v = torch.zeros(1, 1, 1, D), torch.randn(1, T, 1, D), torch.randn(1, T, 1, D)
    q[..., 0], q[..., r:] = 1.0, torch.randn(D - r)
    k[..., :r] = 0.0
    k[:, ::2, :, 0] = 3.0
    want = spark_attention_reference(q, k, v, r, top_k=1)[:, 0]
    k1, k2, vc = _split_cache(k, v, r, capacity=T)
    s1 = (q[:, 0, :, None, :r] @ k1.transpose(-1, -2)) * D**-0.5  # [1, 1, 1, T]
    got = spark_attention_decode_native(s1, q[:, 0, :, None, r:], k2, vc, quantile_multiplier(1, T), False, D**-0.5)
    assert got is not None and torch.isfinite(got).all()
    assert_close("overshooting threshold", got.reshape(1, 1, D), want, 1e-5)
