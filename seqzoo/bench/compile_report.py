"""``python -m seqzoo.bench compile_report``: what every Triton kernel costs on Hopper, without a GPU.

For each op the real launchers run on small CPU tensors (or meta tensors) with every Triton launch
intercepted (:func:`capture_launches`): nothing executes, but each launch's arguments, grid and autotune
configs are recorded. Each launch is then compiled for sm_90a with the specialization a real CUDA launch
gets (Triton's own binder: 16-byte pointer alignment, integer divisibility by 16, constexprs), once per
autotune config, and ptxas / nvdisasm (shipped with Triton) report:

- registers per thread and spill bytes (stores + loads) from ``ptxas -v``;
- shared memory per CTA (Triton's allocation) and the headroom under sm_90's 227 KiB opt-in limit;
- SASS instruction count (static), and the body length of every loop (a backward branch) so that the
  issued work of a loop can be estimated as body x trip count.

Usage::

    python -m seqzoo.bench compile_report [--ops delta_rule,linear_attention] [--json out.json] [--first-config]

Run with ``TRITON_INTERPRET`` unset (this compiles for the GPU). A first run takes minutes on a small CPU
(each config is a full Triton + ptxas compile); Triton's disk cache makes reruns fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable

import torch

SM90_SHARED_LIMIT = 232448  # bytes of shared memory one CTA may opt into on sm_90 (227 KiB)
SM90_REGS_LIMIT = 255


# ----------------------------------------------------------------------------------------------
# capturing launches
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    """One intercepted kernel launch: the JIT function, its autotuner (or None), arguments and grid."""

    name: str
    fn: object  # triton JITFunction (or InterpretedFunction under TRITON_INTERPRET=1)
    autotuner: object | None
    args: tuple
    kwargs: dict
    grid: object

    def configs(self) -> list:
        """The autotune configs this launch can pick (one pseudo-config of fixed options otherwise)."""
        import triton

        if self.autotuner is None:
            opts = {k: self.kwargs[k] for k in ("num_warps", "num_stages") if k in self.kwargs}
            return [triton.Config({}, num_warps=opts.get("num_warps", 4), num_stages=opts.get("num_stages", 3))]
        configs = list(self.autotuner.configs)
        prune = getattr(self.autotuner, "early_config_prune", None)
        if prune is not None and len(configs) > 1:  # what the kernel's own pruning keeps for this launch
            nargs = dict(zip(self.fn.arg_names, self.args))
            configs = list(prune(configs, nargs, **self.kwargs))
        return configs

    def on_sm90(self, config) -> bool:
        """Whether autotune can pick ``config`` on an H100/H200 (kernels prune some there)."""
        prune = getattr(self.autotuner, "early_config_prune", None) if self.autotuner is not None else None
        allowed = getattr(prune, "hopper_warps", None)
        return allowed is None or config.num_warps in allowed

    def call_kwargs(self, config) -> dict:
        kw = {k: v for k, v in self.kwargs.items() if k not in ("num_warps", "num_stages", "num_ctas")}
        kw.update(config.kwargs)
        kw.update(num_warps=config.num_warps, num_stages=config.num_stages)
        return kw

    def bound(self, config) -> dict:
        names = self.fn.arg_names
        out = dict(zip(names, self.args))
        out.update({k: v for k, v in self.call_kwargs(config).items() if k in names})
        return out

    def grid_for(self, config) -> tuple[int, ...]:
        g = self.grid
        if callable(g):
            g = g({**self.bound(config), **config.kwargs})
        g = tuple(int(x) for x in g)
        return g + (1,) * (3 - len(g))


@contextlib.contextmanager
def capture_launches():
    """Record every Triton launch made inside the block instead of running it (returns the list).

    Works for compiled kernels (``JITFunction``), interpreted ones (``TRITON_INTERPRET=1``) and autotuned
    ones; outputs of the intercepted launches stay as allocated (e.g. NaN under ``nan_empty``)."""
    from triton.runtime import autotuner as at
    from triton.runtime import interpreter as it
    from triton.runtime import jit as jt

    records: list[Launch] = []
    saved = (at.Autotuner.run, jt.JITFunction.run, it.InterpretedFunction.run)

    def tuner_run(self, *args, **kwargs):
        kwargs = dict(kwargs)
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        fn = self.fn
        while not hasattr(fn, "arg_names") or isinstance(fn, at.Autotuner):
            fn = fn.fn
        records.append(Launch(fn.__name__, fn, self, args, kwargs, grid))

    def jit_run(self, *args, grid, warmup, **kwargs):
        records.append(Launch(self.__name__, self, None, args, dict(kwargs), grid))

    at.Autotuner.run, jt.JITFunction.run, it.InterpretedFunction.run = tuner_run, jit_run, jit_run
    try:
        yield records
    finally:
        at.Autotuner.run, jt.JITFunction.run, it.InterpretedFunction.run = saved


# ----------------------------------------------------------------------------------------------
# the launches of each op (fwd + bwd), on small tensors
# ----------------------------------------------------------------------------------------------


def _dt(name: str) -> torch.dtype:
    from .common import DTYPES

    return DTYPES[name]


def _grad_all(outs, ins):
    outs = [o for o in outs if o is not None and o.requires_grad]
    grads = [torch.ones_like(o) for o in outs]
    torch.autograd.grad(outs, [t for t in ins if t is not None and t.requires_grad], grads, allow_unused=True)


def _delta_rule(dtype="bf16", D=128, device="cpu", B=2, T=256, H=16, varlen=False):
    from seqzoo.kernels.delta_rule.triton_chunk import delta_rule_triton_chunk
    from seqzoo.kernels.delta_rule.triton_recurrent import delta_rule_triton_recurrent

    dt = _dt(dtype)
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    beta = torch.rand(B, T, H, device=device, dtype=dt, requires_grad=True)
    h0 = torch.randn(B, H, D, D, device=device, requires_grad=True)
    o, ht = delta_rule_triton_chunk(q, k, v, beta, D ** -0.5, h0, None)
    _grad_all([o, ht], [q, k, v, beta, h0])
    with torch.no_grad():
        delta_rule_triton_recurrent(q, k, v, beta, D ** -0.5, h0, None)


def _linear_attention(dtype="bf16", D=128, device="cpu", B=2, T=256, H=16):
    from seqzoo.kernels.linear_attention.triton_chunk import linear_attention_triton
    from seqzoo.kernels.linear_attention.triton_recurrent import linear_attention_recurrent_autograd

    dt = _dt(dtype)
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    h0 = torch.randn(B, H, D, D, device=device, requires_grad=True)
    g = -torch.rand(H, device=device)
    o, ht = linear_attention_triton(q, k, v, decay=g, scale=1.0, causal=True, initial_state=h0,
                                    output_final_state=True)
    _grad_all([o, ht], [q, k, v, h0])
    qs, ks, vs = (x.detach()[:, :16].clone().requires_grad_(True) for x in (q, k, v))
    o, ht = linear_attention_recurrent_autograd(qs, ks, vs, g, 1.0, h0, True, None)
    _grad_all([o, ht], [qs, ks, vs, h0])


def _block_attention(dtype="bf16", D=128, device="cpu", B=2, T=256, H=16):
    from seqzoo.kernels.block_attention.triton_block import block_attention_triton

    dt = _dt(dtype)
    for act in ("softmax", "relu"):
        q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dt, requires_grad=True) for _ in range(3))
        o = block_attention_triton(q, k, v, block_size=64, causal=True, activation=act)
        _grad_all([o], [q, k, v])


def _rms_norm(dtype="bf16", D=2048, device="cpu", M=256, **_):
    from seqzoo.kernels.rms_norm.triton_impl import _RMSNormFn

    dt = _dt(dtype)
    x = torch.randn(M, D, device=device, dtype=dt, requires_grad=True)
    w = torch.randn(D, device=device, dtype=dt, requires_grad=True)
    gate = torch.randn(M, D, device=device, dtype=dt, requires_grad=True)
    y = _RMSNormFn.apply(x, w, gate, 1e-6)
    _grad_all([y], [x, w, gate])


OPS: dict[str, Callable] = {
    "delta_rule": _delta_rule,
    "linear_attention": _linear_attention,
    "block_attention": _block_attention,
    "rms_norm": _rms_norm,
}
DEFAULT_DIMS = {"delta_rule": 128, "linear_attention": 128, "block_attention": 128, "rms_norm": 2048}


def launches_of(op: str, **kw) -> list[Launch]:
    """The distinct kernels (by name, first launch kept) that ``op``'s forward + backward launch."""
    with capture_launches() as recs:
        OPS[op](**kw)
    seen, out, names = set(), [], {}
    for r in recs:
        key = (r.name, tuple(sorted((k, v) for k, v in r.kwargs.items() if isinstance(v, (bool, int, str)))))
        if key not in seen:
            seen.add(key)
            names[r.name] = names.get(r.name, 0) + 1
            if names[r.name] > 1:  # the same kernel with other constexprs (e.g. the backward's recompute)
                r.name = f"{r.name}#{names[r.name]}"
            out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# compiling a launch for sm_90a and reading its resources
# ----------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else name


def sass_stats(cubin: bytes) -> dict:
    """Static SASS instruction count and the body length of each loop (backward branch)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
    addr_re = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
    insts = []  # (address, text)
    labels = {}
    for line in text.splitlines():
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(insts)
            continue
        m = addr_re.search(line)
        if m:
            insts.append((int(m.group(1), 16), m.group(2).strip()))
    loops = []
    for i, (_, ins) in enumerate(insts):
        m = re.search(r"\bBRA\b.*?`?\(?\.?(L_x_\d+)\)?", ins)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            loops.append(i - labels[m.group(1)] + 1)
    real = [x for x in insts if not x[1].startswith("NOP")]
    return {"sass": len(real), "loops": loops}


def compile_launch(launch: Launch, config, arch: int = 90) -> dict:
    """Compile one launch with one config for sm_``arch`` as a real launch would specialize it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = launch.call_kwargs(config)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    t0 = time.perf_counter()
    compiled = triton.compile(src, target=target, options=options.__dict__)
    seconds = time.perf_counter() - t0
    row = {"shared": int(compiled.metadata.shared), "compile s": round(seconds, 1)}
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        from triton.backends.nvidia.compiler import get_ptxas

        res = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}a", ptx,
                              "-o", os.path.join(d, "k.o")], capture_output=True, text=True)
    log = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", log)
    st = re.search(r"(\d+) bytes spill stores", log)
    ld = re.search(r"(\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    row.update(regs=int(regs.group(1)) if regs else -1,
               spill_stores=int(st.group(1)) if st else 0, spill_loads=int(ld.group(1)) if ld else 0,
               stack=int(stack.group(1)) if stack else 0)
    row["headroom"] = SM90_SHARED_LIMIT - row["shared"]
    row.update(sass_stats(compiled.asm["cubin"]))
    row["aligned_ptrs"] = sum(1 for a in attrs.values() if any(x[0] == "tt.divisibility" for x in a))
    return row


def config_desc(cfg) -> str:
    """``BV=32 w4 s2``: the config's meta-parameters, warps and stages."""
    desc = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return (desc + " " if desc else "") + f"w{cfg.num_warps} s{cfg.num_stages}"


def report(ops, dtype="bf16", dims=None, first_config=False, verbose=True) -> list[dict]:
    rows = []
    for op in ops:
        D = (dims or {}).get(op, DEFAULT_DIMS[op])
        for launch in launches_of(op, dtype=dtype, D=D):
            configs = launch.configs()
            if first_config:
                configs = configs[:1]
            for cfg in configs:
                desc = config_desc(cfg)
                row = {"op": op, "kernel": launch.name, "config": desc, "case": f"{dtype} D={D}",
                       "grid": "x".join(map(str, launch.grid_for(cfg))),
                       "sm90": "yes" if launch.on_sm90(cfg) else "pruned"}
                try:
                    row.update(compile_launch(launch, cfg))
                except Exception as e:  # report a failed compile and keep going
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                rows.append(row)
                if verbose:
                    print(_line(row), file=sys.stderr, flush=True)
    return rows


COLS = ["op", "kernel", "config", "sm90", "regs", "spill_stores", "spill_loads", "shared", "headroom", "sass", "loops",
        "compile s"]


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['op']} {row['kernel']} {row['config']}: ERROR {row['error']}"
    return " ".join(f"{c}={row.get(c)}" for c in COLS)


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLS) + " |"
    lines = [head, "|" + "---|" * len(COLS)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['kernel']} | {r['config']} | ERROR: {r['error']} |")
            continue
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLS) + " |")
    return "\n".join(lines)


def problems(rows: list[dict], min_headroom: int = 0) -> list[str]:
    """Rows that break the targets: a compile error, spills, more shared memory than sm_90 allows (configs
    that autotune never picks on sm_90 are not counted)."""
    bad = []
    for r in rows:
        if r.get("sm90") == "pruned":
            continue
        where = f"{r['op']}.{r['kernel']} [{r['config']}]"
        if "error" in r:
            bad.append(f"{where}: {r['error']}")
            continue
        if r["spill_stores"] or r["spill_loads"]:
            bad.append(f"{where}: spills {r['spill_stores']} B stores / {r['spill_loads']} B loads")
        if r["headroom"] < min_headroom:
            bad.append(f"{where}: shared memory {r['shared']} B leaves {r['headroom']} B (< {min_headroom})")
    return bad


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_report: unset TRITON_INTERPRET (this compiles for the GPU)", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="python -m seqzoo.bench compile_report", description=__doc__.split("\n")[0])
    p.add_argument("--ops", default=",".join(OPS), help=f"comma list of {list(OPS)}")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--dim", type=int, default=None, help="head dim (K = V) for the attention ops")
    p.add_argument("--first-config", action="store_true", help="compile only the first autotune config")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--check", action="store_true", help="exit 1 on spills, errors or shared memory over the limit")
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OPS:
            print(f"compile_report: unknown op {o!r}; choose from {list(OPS)}", file=sys.stderr)
            return 2
    dims = {o: args.dim for o in ops if args.dim and o != "rms_norm"}
    rows = report(ops, dtype=args.dtype, dims=dims, first_config=args.first_config)
    import triton

    print(f"## Triton kernels compiled for sm_90a (triton {triton.__version__}), {args.dtype}; "
          f"shared limit {SM90_SHARED_LIMIT} B\n")
    print(table(rows))
    bad = problems(rows)
    if bad:
        print("\nproblems:\n" + "\n".join("- " + b for b in bad))
    if args.json:
        from .common import write_json

        write_json(args.json, {"triton": triton.__version__, "dtype": args.dtype, "rows": rows})
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    raise SystemExit(main())
