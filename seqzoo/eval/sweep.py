"""``python -m seqzoo.eval.sweep SWEEP.yaml``: a grid of training runs, each a normal run directory, collected
into one table and two figures (Zoology's MQAR figures, for every architecture side by side).

A sweep file::

    sweep:
      output_dir: runs/sweeps/mqar_cpu       # one run directory per cell below it
      architectures: all                     # or a list of names; each uses <configs>/<name>.yaml
      configs: .                             # folder of the per-architecture run configs (relative to this file)
      settings:                              # values set together (one entry = one point on the x axes)
        - {task.seq_len: 64, task.num_kv_pairs: 4}
        - {task.seq_len: 128, task.num_kv_pairs: 8}
      grid:                                  # crossed with everything above
        model.hidden_size: [32, 64, 128]
        train.lr: [1.0e-3, 3.0e-3]           # "best over" fields: the table keeps the best value per cell
      best_over: [train.lr]
      overrides: [train.max_steps=1000]      # applied to every run
      metric: accuracy                       # the test metric to compare (higher is better)
      parallel: 2                            # runs at once (processes)
      threads_per_run: 1                     # OMP/torch threads of each run

``architectures`` names run configs (file stems), so a variant such as ``transnormer_t1.yaml`` is a column of
its own, and an architecture added later joins ``all`` by having its ``configs/mqar/<name>.yaml``.

Cells whose ``eval.json`` exists are skipped, so an interrupted sweep resumes where it stopped. A cell that
fails is reported (its log is kept in its run directory) and the sweep goes on. The collection writes
``results.json``, ``results.md`` (one row per architecture and setting: the metric per width, best over
``best_over``) and two PNGs: the metric against width per sequence length, and the metric against the
recurrent state size (``model.state_size()``; attention's KV cache grows with T and is plotted at
``2 * layers * T * hidden`` numbers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..common import ConfigError, atomic_write_text, did_you_mean

SWEEP_KEYS = ("output_dir", "architectures", "configs", "settings", "grid", "best_over", "overrides", "metric",
              "parallel", "threads_per_run")


@dataclass
class Sweep:
    file: Path
    output_dir: Path
    architectures: list[str]
    configs: Path
    settings: list[dict]
    grid: dict[str, list]
    best_over: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    metric: str = "accuracy"
    parallel: int = 1
    threads_per_run: int = 1


@dataclass
class Cell:
    arch: str
    config: Path
    values: dict  # "section.field" -> value
    run_dir: Path

    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.values.items()] + [f"output_dir={self.run_dir}"]


def _known_architectures() -> list[str]:
    import seqzoo

    return sorted(seqzoo.list_architectures())


def _is_run_config(path: Path) -> bool:
    if path.name.startswith(("_", "sweep")):
        return False
    try:
        from ..config import load_composed

        model = load_composed(path).get("model", {})
    except Exception:
        return False
    return isinstance(model, dict) and model.get("model_type") in _known_architectures()


def load_sweep(path: str | os.PathLike) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sweep"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'sweep' section (keys: {', '.join(SWEEP_KEYS)})")
    raw = data["sweep"]
    for key in raw:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"sweep.{key}: unknown key{did_you_mean(key, SWEEP_KEYS)}; valid: {', '.join(SWEEP_KEYS)}")
    here = path.parent
    configs = (here / str(raw.get("configs", "."))).resolve()
    archs = raw.get("architectures", "all")
    if archs == "all":  # every run config in the folder whose model_type is registered (not _*.yaml, sweep*)
        archs = [p.stem for p in sorted(configs.glob("*.yaml")) if _is_run_config(p)]
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise ConfigError(f"sweep.architectures: expected 'all' or a list of architecture names, got {archs!r}")
    for a in archs:
        if not (configs / f"{a}.yaml").is_file():
            raise ConfigError(f"sweep.architectures: no run config for {a!r}: expected {configs / (a + '.yaml')}")
    settings = raw.get("settings", [{}])
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise ConfigError(f"sweep.settings: expected a list of mappings (section.field: value), got {settings!r}")
    grid = raw.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"sweep.grid: expected a mapping of section.field to a non-empty list, got {grid!r}")
    for key in [k for s in settings for k in s] + list(grid):
        if key.count(".") != 1:
            raise ConfigError(f"sweep: {key!r} is not section.field (e.g. model.hidden_size)")
    best_over = raw.get("best_over", [])
    for key in best_over:
        if key not in grid:
            raise ConfigError(f"sweep.best_over: {key!r} is not a grid key; grid keys: {', '.join(grid)}")
    out = raw.get("output_dir")
    if not isinstance(out, str):
        raise ConfigError(f"sweep.output_dir: expected a directory path, got {out!r}")
    ints = {k: raw.get(k, 1) for k in ("parallel", "threads_per_run")}
    for k, v in ints.items():
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"sweep.{k}: expected a positive integer, got {v!r}")
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"sweep.overrides: expected a list of section.field=value strings, got {overrides!r}")
    return Sweep(path, Path(out), archs, configs, settings, grid, list(best_over), overrides,
                 str(raw.get("metric", "accuracy")), **ints)


def _slug(values: dict) -> str:
    parts = []
    for k, v in values.items():
        name = k.split(".", 1)[1]
        parts.append(f"{name}={v}")
    return "_".join(parts) or "default"


def cells(sweep: Sweep) -> list[Cell]:
    keys = list(sweep.grid)
    out = []
    for arch in sweep.architectures:
        for setting in sweep.settings:
            for combo in itertools.product(*(sweep.grid[k] for k in keys)):
                values = {**setting, **dict(zip(keys, combo))}
                out.append(Cell(arch, sweep.configs / f"{arch}.yaml", values, sweep.output_dir / arch / _slug(values)))
    return out


def is_done(cell: Cell) -> bool:
    return (cell.run_dir / "eval.json").is_file()


def run_cell(cell: Cell, sweep: Sweep, train_script: Path) -> tuple[Cell, int, float]:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(sweep.threads_per_run), MKL_NUM_THREADS=str(sweep.threads_per_run))
    cmd = [sys.executable, str(train_script), str(cell.config), *sweep.overrides, *cell.overrides(),
           "train.overwrite=true", "train.progress_bar=false"]
    t0 = time.time()
    with open(cell.run_dir / "sweep.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return cell, rc, time.time() - t0


def run(sweep: Sweep, dry_run: bool = False) -> list[tuple[Cell, int, float]]:
    todo = [c for c in cells(sweep) if not is_done(c)]
    total = len(cells(sweep))
    print(f"sweep: {total} runs, {total - len(todo)} finished, {len(todo)} to run "
          f"({sweep.parallel} at once, {sweep.threads_per_run} thread(s) each) -> {sweep.output_dir}", flush=True)
    train_script = Path(__file__).resolve().parents[2] / "train.py"
    if dry_run:
        for c in todo:
            print("  would run:", c.arch, " ".join(c.overrides()))
        return []
    if not train_script.is_file():
        raise ConfigError(f"sweep: cannot find train.py next to the seqzoo package ({train_script})")
    done = []
    with ThreadPoolExecutor(max_workers=sweep.parallel) as pool:  # threads wait on subprocesses
        for cell, rc, secs in pool.map(lambda c: run_cell(c, sweep, train_script), todo):
            status = "ok" if rc == 0 and is_done(cell) else f"FAILED (exit {rc}; log: {cell.run_dir / 'sweep.log'})"
            print(f"  {cell.arch:14s} {_slug(cell.values):50s} {secs:7.1f} s  {status}", flush=True)
            done.append((cell, rc, secs))
    return done


# ----------------------------------------------------------------------------------------------------------
# collection
# ----------------------------------------------------------------------------------------------------------


def _state_size(run_dir: Path, seq_len: int | None) -> tuple[int | None, bool]:
    """(numbers of recurrent state per sequence, grows_with_T) of a finished run's model."""
    import torch
    from transformers import AutoConfig, AutoModel

    import seqzoo  # noqa: F401

    final = run_dir / "final"
    if not (final / "config.json").is_file():
        return None, False
    cfg = AutoConfig.from_pretrained(final)
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    fixed = model.state_size()
    kv_layers = sum(1 for m in cfg.layer_mixers() if m == "attention")
    if kv_layers and seq_len:  # a KV cache: 2 x layers x T x (kv heads x head dim)
        kv = 0
        for block in model.layers:
            s = block.mixer_settings
            if block.mixer.__class__.__name__ == "Attention":
                kv += 2 * seq_len * (getattr(s, "num_kv_heads", None) or s.num_heads) * s.head_dim
        return fixed + kv, True
    return fixed, False


def collect(sweep: Sweep) -> list[dict]:
    rows = []
    for c in cells(sweep):
        if not is_done(c):
            continue
        result = json.loads((c.run_dir / "eval.json").read_text())
        metric = result.get("metrics", {}).get(sweep.metric)
        seq_len = c.values.get("task.seq_len") or result.get("task", {}).get("seq_len")
        size, grows = _state_size(c.run_dir, seq_len)
        rows.append({"arch": c.arch, **c.values, "metric": metric, "state_size": size, "state_grows_with_T": grows,
                     "train_time_s": result.get("train_time_s"), "run_dir": str(c.run_dir)})
    return rows


def best_rows(sweep: Sweep, rows: list[dict]) -> list[dict]:
    """One row per cell with the best metric over ``best_over`` (Zoology keeps the best learning rate)."""
    keep: dict[tuple, dict] = {}
    for r in rows:
        key = tuple((k, json.dumps(v)) for k, v in r.items() if k in ("arch",) or (
            "." in k and k not in sweep.best_over))
        if r["metric"] is None:
            continue
        if key not in keep or r["metric"] > keep[key]["metric"]:
            keep[key] = r
    return list(keep.values())


def _x_key(sweep: Sweep) -> str:
    return "model.hidden_size" if "model.hidden_size" in sweep.grid else next(iter(sweep.grid), "")


def markdown(sweep: Sweep, rows: list[dict]) -> str:
    xk = _x_key(sweep)
    xs = sorted({r.get(xk) for r in rows if r.get(xk) is not None})
    setting_keys = [k for s in sweep.settings for k in s]
    setting_keys = list(dict.fromkeys(setting_keys))
    head = ["architecture", *[k.split(".", 1)[1] for k in setting_keys],
            *[f"{xk.split('.', 1)[1]} {x}" for x in xs], "state size at the largest (numbers)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["arch"], *[r.get(k) for k in setting_keys]), {})[r.get(xk)] = r
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        by_x = groups[key]
        cells_ = [f"{by_x[x]['metric']:.3f}" if x in by_x else "—" for x in xs]
        last = by_x[max(by_x)] if by_x else None
        size = "—" if last is None or last["state_size"] is None else (
            f"{last['state_size']:,}" + (" (KV cache, grows with T)" if last["state_grows_with_T"] else ""))
        lines.append("| " + " | ".join([key[0], *[str(k) for k in key[1:]], *cells_, size]) + " |")
    best = f", best over {', '.join(sweep.best_over)}" if sweep.best_over else ""
    return f"Test {sweep.metric} per architecture and setting{best}.\n\n" + "\n".join(lines) + "\n"


def figures(sweep: Sweep, rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    xk = _x_key(sweep)
    setting_keys = list(dict.fromkeys(k for s in sweep.settings for k in s))
    settings = sorted({tuple(r.get(k) for k in setting_keys) for r in rows},  # numbers in numeric order
                      key=lambda t: tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in t))
    archs = sorted({r["arch"] for r in rows})
    paths = []
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(4.2 * max(len(settings), 1), 3.6), squeeze=False)
    for ax, st in zip(axes[0], settings):
        for arch in archs:
            pts = sorted((r[xk], r["metric"]) for r in rows if r["arch"] == arch and
                         tuple(r.get(k) for k in setting_keys) == st and r.get(xk) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=arch)
        ax.set_xscale("log", base=2)
        ax.set_title(", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in zip(setting_keys, st)), fontsize=9)
        ax.set_xlabel(xk.split(".", 1)[1])
        ax.set_ylabel(sweep.metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "metric_vs_width.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # one panel per setting, as for width: points of different lengths are different tasks
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(4.2 * max(len(settings), 1), 3.6), squeeze=False)
    for ax, st in zip(axes[0], settings):
        for arch in archs:
            sel = [r for r in rows if r["arch"] == arch and r["state_size"] and
                   tuple(r.get(k) for k in setting_keys) == st]
            pts = sorted((r["state_size"], r["metric"]) for r in sel)
            if pts:
                grows = any(r["state_grows_with_T"] for r in sel)
                ax.plot(*zip(*pts), marker="o", linestyle=":" if grows else "-",
                        label=arch + (" (KV cache)" if grows else ""))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on a short range
        ax.set_title(", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in zip(setting_keys, st)), fontsize=9)
        ax.set_xlabel("recurrent state per sequence (numbers)")
        ax.set_ylabel(sweep.metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "metric_vs_state_size.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def report(sweep: Sweep) -> dict:
    rows = collect(sweep)
    best = best_rows(sweep, rows)
    out = sweep.output_dir
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(sweep, best)
    atomic_write_text(out / "results.json", json.dumps({"all_runs": rows, "best": best}, indent=2) + "\n")
    atomic_write_text(out / "results.md", table)
    pngs = figures(sweep, best, out) if best else []
    print(table)
    for p in [out / "results.json", out / "results.md", *pngs]:
        print("wrote", p)
    return {"rows": rows, "best": best, "table": table, "figures": pngs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqzoo.eval.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="a sweep YAML file (see configs/mqar/sweep_cpu.yaml)")
    parser.add_argument("--collect-only", action="store_true", help="only collect finished runs into the table")
    parser.add_argument("--dry-run", action="store_true", help="list the runs that would start")
    parser.add_argument("--parallel", type=int, default=None, help="override sweep.parallel")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        if args.parallel is not None:
            if args.parallel < 1:
                raise ConfigError(f"--parallel: expected a positive integer, got {args.parallel}")
            sweep.parallel = args.parallel
        if not args.collect_only:
            run(sweep, dry_run=args.dry_run)
        if not args.dry_run:
            report(sweep)
    except ConfigError as e:
        print(f"seqzoo-sweep: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
