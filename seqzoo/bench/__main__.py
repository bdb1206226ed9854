"""``python -m seqzoo.bench OP [options]``: print a throughput table for one op (see seqzoo/bench/common.py).

Each ``seqzoo/bench/<op>.py`` defines ``add_arguments(parser)`` and ``run(args) -> list[dict]``; a module
with its own ``main(argv) -> int`` (``compile_report``, a report rather than a timing table) gets the rest
of the command line instead.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from datetime import date

import torch

from . import common


def available() -> list[str]:
    import seqzoo.bench as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in ("common", "__main__"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m seqzoo.bench OP [options]\n  OP: one of {names}")
        return 0 if argv else 2
    op = argv.pop(0)
    if op not in names:
        print(f"seqzoo.bench: unknown op {op!r}; available: {names}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"seqzoo.bench.{op}")
    if hasattr(mod, "main"):
        return int(mod.main(argv))
    parser = argparse.ArgumentParser(prog=f"python -m seqzoo.bench {op}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows and the environment to this file")
    parser.add_argument("--jsonl", default=None,
                        help="append each row to this JSON-lines file as soon as it is measured (benches that call "
                             "common.emit; the others' rows are appended when the op finishes)")
    parser.add_argument("--smoke", action="store_true",
                        help="one call per timing (and tiny shapes where the bench knows them): checks the command")
    parser.add_argument("--check-args", action="store_true",
                        help="parse the command line and stop (scripts/gpu_check.sh --dry-run checks its GPU arguments)")
    mod.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.check_args:
        print(f"seqzoo.bench {op}: arguments ok")
        return 0
    args.device = torch.device(args.device)
    common.SMOKE = args.smoke
    common.set_sink(args.jsonl, op, args.device)
    rows = [common.emit(common.finish_row(r, args.device)) for r in mod.run(args)]
    env = common.environment(args.device)
    title = f"{op} on {env.get('gpu', env.get('cpu', str(args.device)))}, {date.today().isoformat()}"
    common.print_table(title, rows)
    if args.json:
        common.write_json(args.json, {"op": op, "env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
