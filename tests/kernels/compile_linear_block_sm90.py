"""Compile the linear_attention and block_attention Triton kernels for an H100/H200 (sm_90) without a GPU:
Triton's front end, its GPU passes and ptxas run on the CPU. Catches what the interpreter accepts and the
compiler refuses (globals that are not constexpr, types across branches, dot shapes). One configuration per
kernel (bf16, head dim 128, decay on; block size 64, softmax and ReLU) keeps it to about a minute.

    python tests/kernels/compile_linear_block_sm90.py        (run with TRITON_INTERPRET unset)
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from seqzoo.kernels.block_attention import triton_block as tb  # noqa: E402
from seqzoo.kernels.linear_attention import triton_chunk as tc  # noqa: E402
from seqzoo.kernels.linear_attention import triton_recurrent as tr  # noqa: E402

target = GPUTarget("cuda", 90, 32)
ok, bad = 0, 0


def comp(kernel, sig, consts, nw=4, ns=2):
    global ok, bad
    fn = kernel.fn if hasattr(kernel, "fn") else kernel
    full = {}
    for name in fn.arg_names:
        if name in consts:
            full[name] = "constexpr"
        else:
            full[name] = sig[name]
    src = ASTSource(fn, full, constexprs={k: v for k, v in consts.items()})
    try:
        k = triton.compile(src, target=target, options=dict(num_warps=nw, num_stages=ns))
        _ = k.asm["cubin"] if "cubin" in k.asm else None
        ok += 1
    except Exception as e:
        bad += 1
        print("FAIL", fn.__name__, consts, type(e).__name__, str(e)[:1500])

for dt in ["bf16"]:
    P = "*" + dt
    for (K, V), dec in [((128, 128), True)]:
        BK, BV = tc._tile(K), tc._tile(V)
        base = dict(H=16, K=K, V=V, BT=64, BK=BK, BV=BV, HAS_DECAY=dec)
        c = dict(base, USE_H0=True, STORE_FINAL=True)
        if not dec: c["g"] = None
        comp(tc._fwd_h, dict(k=P, v=P, g="*fp32", h=P, h0="*fp32", ht="*fp32", cu="*i32", chunk_offsets="*i32"), c)
        c = dict(base)
        if not dec: c["g"] = None
        comp(tc._fwd_o, dict(q=P, k=P, v=P, g="*fp32", h=P, o=P, scale="fp32", cu="*i32", chunk_tab="*i32"), c)
        c = dict(base, USE_DHT=True, STORE_DH0=True)
        if not dec: c["g"] = None
        comp(tc._bwd_dh, dict(q=P, do=P, g="*fp32", dh=P, dht="*fp32", dh0="*fp32", scale="fp32", cu="*i32", chunk_offsets="*i32"), c)
        c = dict(base)
        if not dec: c["g"] = None
        comp(tc._bwd_dqk, dict(q=P, k=P, v=P, g="*fp32", h=P, do=P, dh=P, dq=P, dk=P, scale="fp32", cu="*i32", chunk_tab="*i32"), c)
        comp(tc._bwd_dv, dict(q=P, k=P, g="*fp32", do=P, dh=P, dv=P, scale="fp32", cu="*i32", chunk_tab="*i32"), c)
        BKr = max(16, triton.next_power_of_2(K)); BVr = max(16, min(triton.next_power_of_2(V), 8192 // BKr))
        c = dict(H=16, K=K, V=V, BK=BKr, BV=BVr, HAS_DECAY=dec, USE_H0=True, STORE_FINAL=True)
        if not dec: c["g"] = None
        comp(tr._fwd_recurrent, dict(q=P, k=P, v=P, g="*fp32", o=P, h0="*fp32", ht="*fp32", scale="fp32", cu="*i32"), c, nw=4, ns=1)
        BVb = max(16, triton.next_power_of_2(V)); BKb = max(16, min(triton.next_power_of_2(K), 8192 // BVb))
        c = dict(H=16, K=K, V=V, BK=BKb, BV=BVb, HAS_DECAY=dec, USE_H0=True, USE_DHT=True)
        if not dec: c["g"] = None
        comp(tr._bwd_recurrent, dict(q=P, k=P, v=P, g="*fp32", do=P, h0="*fp32", dht="*fp32", dq=P, dk=P, dv_part="*fp32", dh0="*fp32", scale="fp32", cu="*i32"), c, nw=4, ns=1)
    for (D, DV), w, causal, relu in [((128, 128), 64, True, False), ((128, 128), 64, True, True)]:
        BM = tb._tile(w)
        c = dict(H=16, D=D, DV=DV, BM=BM, BD=max(16, triton.next_power_of_2(D)), BDV=max(16, triton.next_power_of_2(DV)), CAUSAL=causal, RELU=relu)
        if relu: c["lse"] = None
        comp(tb._fwd, dict(q=P, k=P, v=P, o=P, lse="*fp32", cu="*i32", tab="*i32", scale="fp32", w="i32"), c)
        c2 = dict(c)
        if relu: c2["delta"] = None
        comp(tb._bwd_dkv, dict(q=P, k=P, v=P, do=P, lse="*fp32", delta="*fp32", dk=P, dv=P, cu="*i32", tab="*i32", scale="fp32", w="i32"), c2)
        comp(tb._bwd_dq, dict(q=P, k=P, v=P, do=P, lse="*fp32", delta="*fp32", dq=P, cu="*i32", tab="*i32", scale="fp32", w="i32"), c2)
print("compiled", ok, "failed", bad)
sys.exit(1 if bad else 0)
