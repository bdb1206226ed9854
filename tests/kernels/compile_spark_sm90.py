"""Compile the Spark kernels (statistical_topk, sparse_ffn, spark_attention) for an H100/H200 (sm_90)
without a GPU: Triton's front end, its GPU passes and ptxas run on the CPU. Catches what the interpreter
accepts and the compiler refuses. One configuration per kernel (bf16; head dim 128 with r = 64, GQA 16/4).

    python tests/kernels/compile_spark_sm90.py        (run with TRITON_INTERPRET unset)
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from seqzoo.kernels.sparse_ffn import triton_gather as sf  # noqa: E402
from seqzoo.kernels.spark_attention import triton_flash as sa  # noqa: E402
from seqzoo.kernels.statistical_topk import triton_impl as st  # noqa: E402

target = GPUTarget("cuda", 90, 32)
ok, bad = 0, 0


def comp(kernel, sig, consts, nw=4, ns=2):
    global ok, bad
    fn = kernel if isinstance(kernel, triton.runtime.JITFunction) else kernel.fn  # autotuned: .fn
    full = {name: ("constexpr" if name in consts else sig[name]) for name in fn.arg_names}
    src = ASTSource(fn, full, constexprs=dict(consts))
    try:
        triton.compile(src, target=target, options=dict(num_warps=nw, num_stages=ns))
        ok += 1
    except Exception as e:  # report every failure, not only the first
        bad += 1
        print("FAIL", fn.__name__, consts, type(e).__name__, str(e)[:1500])


P = "*bf16"
comp(st._fwd, dict(X=P, Y=P, THETA="*fp32", MU="*fp32", C="*fp32", d="i32", z="fp32", tiny="fp32"),
     dict(HARD=True, BLOCK=4096), nw=16)  # the soft forward differs by one elementwise line
for hard in (False, True):
    comp(st._bwd, dict(X=P, DY=P, DX=P, THETA="*fp32", MU="*fp32", C="*fp32", d="i32"), dict(HARD=hard, BLOCK=4096),
         nw=16)
comp(sf._value, dict(X=P, WV=P, IDX="*i32", ASEL=P, CNT="*i32", U="*fp32", H="*fp32", K="i32", DV="i32"),
     dict(BK=32, BD=128))
comp(sf._down, dict(H="*fp32", WD=P, IDX="*i32", CNT="*i32", O=P, K="i32", DM="i32"), dict(BK=32, BD=128))
meta = dict(H=16, HKV=4, D=128, R=64, DV=128, BM=64, BN=64, BR=64, BR2=64, BDV=128)
common = dict(q=P, k=P, v=P, lse="*fp32", thr="*fp32", km="*i8", cuq="*i32", cuk="*i32", tab="*i32", scale="fp32")
m = dict(meta, HAS_KM=True)  # the key-mask variant: a superset of the code of the other
comp(sa._fwd, dict(common, o=P, ztab="*fp32", top_k="i32", tiny="fp32"), m)
comp(sa._bwd_dkv, dict(common, do=P, delta="*fp32", dk=P, dv=P), m)
comp(sa._bwd_dq, dict(common, do=P, delta="*fp32", dq=P), m)
print("compiled", ok, "failed", bad)
sys.exit(1 if bad else 0)
