"""Compile an op's Triton kernels for an H100/H200 (sm_90a) without a GPU, exactly as a launch would.

The op's real launchers run on CPU tensors with every launch intercepted; each launch is then compiled with
Triton's own binder (16-byte pointer alignment and integer divisibility hints, constexprs) for sm_90a, and
ptxas reports registers and spills (``seqzoo.bench.compile_report`` does the work). Catches kernels that
only work in the interpreter, shared memory over sm_90's 227 KiB, and register spills.

    python tests/kernels/compile_sm90.py OP DTYPE DIM [DTYPE DIM ...] [--all-configs] [--no-spills]

``--all-configs`` compiles every autotune config (else the first); ``--no-spills`` fails on any spill.
Run with TRITON_INTERPRET unset.
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: this compiles for the GPU")

from seqzoo.bench import compile_report as cr  # noqa: E402


def main(argv):
    flags = {a for a in argv if a.startswith("--")}
    rest = [a for a in argv if not a.startswith("--")]
    op, pairs = rest[0], rest[1:]
    cases = [(pairs[j], int(pairs[j + 1])) for j in range(0, len(pairs), 2)]
    rows = []
    for dt, dim in cases:
        for launch in cr.launches_of(op, dtype=dt, D=dim):
            configs = launch.configs() if "--all-configs" in flags else launch.configs()[:1]
            for cfg in configs:
                row = {"op": op, "kernel": launch.name, "config": f"{dt} D={dim} {cr.config_desc(cfg)}"}
                try:
                    row.update(cr.compile_launch(launch, cfg))
                except Exception as e:  # a compile error: report it and keep going
                    row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
                print(cr._line(row), flush=True)
                rows.append(row)
    bad = [b for b in cr.problems(rows) if "--no-spills" in flags or "spills" not in b]
    print(f"compiled {len(rows)} failed {len(bad)}")
    for b in bad:
        print("PROBLEM", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
