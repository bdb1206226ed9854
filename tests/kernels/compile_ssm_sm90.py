"""Compile every ssd_scan and selective_scan Triton kernel for an H100/H200 (sm_90) without a GPU: Triton's
front end, its GPU passes and ptxas run on the CPU. Catches what the interpreter accepts and the compiler
refuses (the interpreter runs a different scan in selective_scan: see its ``_scan``), and shared-memory overflows.

    python tests/kernels/compile_ssm_sm90.py [ssd] [selective_scan]      (run with TRITON_INTERPRET unset)
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from seqzoo.kernels.selective_scan import triton_chunk as sc  # noqa: E402
from seqzoo.kernels.selective_scan import triton_recurrent as sr  # noqa: E402
from seqzoo.kernels.ssd import triton_chunk as dc  # noqa: E402
from seqzoo.kernels.ssd import triton_recurrent as dr  # noqa: E402

SHARED_LIMIT = 232448  # bytes of shared memory per block on sm_90
TARGET = GPUTarget("cuda", 90, 32)
failed = 0


def compile_one(label, kernel, types, consts, warps=4, stages=2):
    """``types``: runtime argument name -> Triton type string; ``consts``: constexpr name -> value."""
    global failed
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    signature = {a: ("constexpr" if a in consts else types[a]) for a in fn.arg_names}
    constexprs = {(fn.arg_names.index(c),): v for c, v in consts.items()}
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=TARGET,
                                  options={"num_warps": warps, "num_stages": stages})
        shared = compiled.metadata.shared
        ok = shared <= SHARED_LIMIT
        print(f"{label} {fn.__name__}: {'OK' if ok else 'TOO MUCH SHARED MEMORY'} shared={shared}", flush=True)
        failed += not ok
    except Exception as e:  # report and keep going
        print(f"{label} {fn.__name__}: FAILED {type(e).__name__}: {str(e)[:2000]}", flush=True)
        failed += 1


def ssd(dt: str, H: int, G: int, P: int, N: int):
    label = f"ssd {dt} H={H} G={G} P={P} N={N}"
    p, f, i = "*" + dt, "*fp32", "*i32"
    BP, BN = dc._tile(P), dc._tile(N)
    dims = dict(H=H, G=G, P=P, N=N, BT=dc.BT, BP=BP, BN=BN)
    BH = min(16, triton.next_power_of_2(H))
    compile_one(label, dc._cumsum, dict(delta=f, A=f, cs=f, cu=i, chunk_tab=i), dict(H=H, BT=dc.BT, BH=BH))
    compile_one(label, dc._fwd_h, dict(x=p, delta=f, B=p, cs=f, h=p, h0=f, ht=f, cu=i, chunk_offs=i),
                dict(dims, USE_H0=True, STORE_FINAL=True))
    compile_one(label, dc._fwd_y, dict(x=p, delta=f, B=p, C=p, D=f, cs=f, h=p, y=p, cu=i, chunk_tab=i),
                dict(dims, D_MODE=2))
    compile_one(label, dc._bwd_dh, dict(dy=p, C=p, cs=f, dh=p, dht=f, dh0=f, cu=i, chunk_offs=i),
                dict(dims, USE_DHT=True, STORE_DH0=True))
    compile_one(label, dc._bwd_dx, dict(x=p, delta=f, B=p, C=p, D=f, cs=f, dh=p, dy=p, dx=p, ddt_part=f, cu=i,
                                        chunk_tab=i), dict(dims, D_MODE=1))
    compile_one(label, dc._bwd_dbc, dict(x=p, delta=f, B=p, C=p, cs=f, h=p, dh=p, dy=p, dB=p, dC=p, dcs_part=f,
                                         cu=i, chunk_tab=i), dims, warps=8)
    compile_one(label, dc._bwd_dt, dict(delta=f, A=f, dcs=f, ddt_v=f, ddt=f, dA_part=f, cu=i, chunk_tab=i),
                dict(H=H, BT=dc.BT, BH=BH))
    BNr = max(16, triton.next_power_of_2(N))
    BPr = max(16, min(triton.next_power_of_2(P), 8192 // BNr))
    compile_one(label, dr._fwd_recurrent, dict(x=p, delta=f, A=f, B=p, C=p, D=f, y=p, h0=f, ht=f, cu=i),
                dict(H=H, G=G, P=P, N=N, BP=BPr, BN=BNr, D_MODE=1, USE_H0=True, STORE_FINAL=True), stages=1)


def selective(dt: str, Dm: int, G: int, N: int):
    label = f"selective_scan {dt} D={Dm} G={G} N={N}"
    p, f, i = "*" + dt, "*fp32", "*i32"
    BD, BN = sc._blocks(Dm, G, N)
    BDp = max(1, min(64, 4096 // BN))
    dims = dict(Dm=Dm, G=G, N=N, BT=sc.BT, BD=BD, BN=BN)
    compile_one(label, sc._fwd_local, dict(delta=f, u=p, B=p, A=f, s_end=f, dsum=f, cu=i, chunk_tab=i), dims,
                stages=1)
    compile_one(label, sc._fwd_pass, dict(A=f, s_end=f, dsum=f, h=f, h0=f, ht=f, cu=i, chunk_offs=i),
                dict(Dm=Dm, N=N, BT=sc.BT, BD=BDp, BN=BN, USE_H0=True, STORE_FINAL=True), stages=1)
    compile_one(label, sc._fwd_out, dict(delta=f, u=p, B=p, C=p, A=f, D=f, h=f, y=p, cu=i, chunk_tab=i),
                dict(dims, HAS_D=True), stages=1)
    compile_one(label, sc._bwd_local, dict(delta=f, u=p, B=p, C=p, A=f, dy=p, dh_local=f, cu=i, chunk_tab=i),
                dims, stages=1)
    compile_one(label, sc._bwd_pass, dict(A=f, dh_local=f, dsum=f, dh=f, dht=f, dh0=f, cu=i, chunk_offs=i),
                dict(Dm=Dm, N=N, BT=sc.BT, BD=BDp, BN=BN, USE_DHT=True, STORE_DH0=True), stages=1)
    compile_one(label, sc._bwd_grads, dict(delta=f, u=p, B=p, C=p, A=f, D=f, dy=p, h=f, dh=f, dsum=f, du=p,
                                           ddelta=f, dA_part=f, dB_part=f, dC_part=f, cu=i, chunk_tab=i),
                dict(dims, HAS_D=True), stages=1)
    BDr = max(1, min(triton.next_power_of_2(Dm), 2048 // BN))
    compile_one(label, sr._fwd_recurrent, dict(u=p, delta=f, A=f, B=p, C=p, D=f, y=p, h0=f, ht=f, cu=i),
                dict(Dm=Dm, G=G, N=N, BD=BDr, BN=BN, HAS_D=True, USE_H0=True, STORE_FINAL=True), stages=1)


def main(argv):
    ops = argv or ["ssd", "selective_scan"]
    if "ssd" in ops:
        ssd("bf16", 32, 1, 64, 128)  # Mamba-2 defaults: headdim 64, d_state 128
        ssd("fp16", 8, 2, 60, 200)  # P, N not powers of two, several N tiles, grouped
    if "selective_scan" in ops:
        selective("bf16", 1536, 1, 16)  # Mamba-1 at d_model 768: d_inner 1536, d_state 16
        selective("fp16", 96, 2, 128)  # a wide state: one channel per program block
    print("failed:", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
