"""Compile the dilated_conv Triton kernels (fused forward and backward) for an H100/H200 (sm_90) without a
GPU: Triton's front end, its GPU passes and ptxas run on the CPU. Catches what the interpreter accepts and
the compiler refuses. One configuration per kernel: bf16 input, K = 3 taps, 3 levels (the level and tap loops are unrolled the same way for any count), SiLU, residual,
bias, initial and final state.

    python tests/kernels/compile_dilated_conv_sm90.py        (run with TRITON_INTERPRET unset)
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from seqzoo.kernels.dilated_conv import triton_fused as tf  # noqa: E402

target = GPUTarget("cuda", 90, 32)
ok, bad = 0, 0


def comp(kernel, sig, consts, nw=tf.NUM_WARPS, ns=1):
    global ok, bad
    fn = kernel if hasattr(kernel, "arg_names") else kernel.fn  # a JITFunction, or an autotuner around one
    full = {name: ("constexpr" if name in consts else sig[name]) for name in fn.arg_names}
    src = ASTSource(fn, full, constexprs=dict(consts))
    try:
        triton.compile(src, target=target, options=dict(num_warps=nw, num_stages=ns))
        ok += 1
    except Exception as e:  # noqa: BLE001 - report every failure
        bad += 1
        print("FAIL", fn.__name__, consts, type(e).__name__, str(e)[:1500])


P, F32, I32 = "*bf16", "*fp32", "*i32"
meta = dict(L=3, K=3, ACT=1, RESIDUAL=True, HAS_B=True, HAS_H0=True, BS=tf.BS, BD=32)
sizes = dict(NT="i32", NPROG="i32", BT="i32", SCR="i32", HS_STRIDE="i64", S="i32", D="i32", PMAX="i32")
comp(tf._fwd, dict(x=P, w=F32, b=F32, h0=F32, y=P, hs=F32, ht=F32, scr=F32, cu=I32, tab=I32, geo=I32, **sizes),
     dict(meta, SAVE=True, STORE_FINAL=True))
comp(tf._bwd, dict(x=P, w=F32, b=F32, h0=F32, hs=F32, dy=P, dht=F32, dx=P, dh0=F32, dwp=F32, dbp=F32, scr=F32,
                   cu=I32, tab=I32, geo=I32, **sizes), dict(meta, BK=4, HAS_DHT=True))
print("compiled", ok, "failed", bad)
sys.exit(1 if bad else 0)
