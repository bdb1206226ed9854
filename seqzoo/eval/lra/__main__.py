"""``python -m seqzoo.eval.lra --runs runs/lra``: the LRA table of the finished runs below a folder (markdown on
stdout; ``lra_table.md``, ``lra_table.json`` and ``lra_table.png`` written to ``--output``, default the runs
folder). See :mod:`seqzoo.eval.lra.table`."""

from __future__ import annotations

import argparse
import sys

from .table import write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqzoo.eval.lra", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/lra", help="folder searched (recursively) for finished runs")
    parser.add_argument("--output", default=None, help="where lra_table.{md,json,png} go (default: --runs)")
    args = parser.parse_args(argv)
    try:
        markdown, table, out = write_table(args.runs, args.output)
    except FileNotFoundError as e:
        print(f"seqzoo.eval.lra: error: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    n = len(table["runs"])
    print(f"\n{n} finished LRA run(s); wrote {out / 'lra_table.md'}, .json, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
