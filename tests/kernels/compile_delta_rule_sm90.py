"""Compile every delta_rule Triton kernel for an H100/H200 (sm_90) without a GPU: Triton's front end,
its GPU passes and ptxas all run on the CPU. Catches kernels that only work in the interpreter, and
shared-memory overflows (the launch would fail with "out of resources" on the GPU).

    python tests/kernels/compile_delta_rule_sm90.py [dtype K]...     (run with TRITON_INTERPRET unset)
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from seqzoo.kernels.delta_rule import triton_chunk as tc  # noqa: E402
from seqzoo.kernels.delta_rule import triton_recurrent as tr  # noqa: E402

SHARED_LIMIT = 232448  # bytes of shared memory per block on sm_90


def jobs(dt: str, K: int):
    V, H = K, 16
    BK = max(16, triton.next_power_of_2(K))
    BV = 64 if BK <= 128 else 32
    bt = tc.chunk_size(K)
    p, f, i = "*" + dt, "*fp32", "*i32"
    dims = dict(H=H, K=K, V=V, BT=bt, BK=BK, BV=BV)
    yield "wy_fwd", tc._wy_fwd_kernel, [p, p, p, f, p, p, i, i], dims, 4
    yield "state_fwd", tc._state_fwd_kernel, [p, p, p, f, f, p, f, i, i], dict(dims, USE_H0=True, STORE_HT=True), 4
    yield "output_fwd", tc._output_fwd_kernel, [p, p, p, f, p, "fp32", i, i], dims, 4
    yield "state_bwd", tc._state_bwd_kernel, [p, p, p, p, f, f, f, f, "fp32", i, i], dict(dims, USE_DHT=True, STORE_DH0=True), 4
    yield "grads_bwd", tc._grads_bwd_kernel, [p, p, p, p, f, f, p, p, f, f, p, p, p, p, "fp32", i, i], dims, 8
    rec = dict(H=H, K=K, V=V, BK=BK, BV=BV, USE_H0=True, STORE_HT=True)
    yield "recurrent", tr._recurrent_fwd_kernel, [p, p, p, p, f, p, f, "fp32", i], rec, 4


def main(argv):
    cases = [(argv[j], int(argv[j + 1])) for j in range(0, len(argv), 2)] or [("bf16", 128)]
    target = GPUTarget("cuda", 90, 32)
    failed = 0
    for dt, K in cases:
        for name, kernel, types, consts, warps in jobs(dt, K):
            fn = kernel.fn  # under the autotuner
            runtime = [a for a in fn.arg_names if a not in consts]
            signature = dict(zip(runtime, types))
            signature.update({c: "constexpr" for c in consts})
            constexprs = {(fn.arg_names.index(c),): v for c, v in consts.items()}
            try:
                compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=target,
                                          options={"num_warps": warps, "num_stages": 2})
                shared = compiled.metadata.shared
                ok = shared <= SHARED_LIMIT
                print(f"{dt} K={K} {name}: {'OK' if ok else 'TOO MUCH SHARED MEMORY'} shared={shared}")
                failed += not ok
            except Exception as e:  # a compile error: report it and keep going
                print(f"{dt} K={K} {name}: FAILED {type(e).__name__}: {str(e)[:2000]}")
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
