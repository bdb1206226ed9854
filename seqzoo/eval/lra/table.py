"""The LRA table: finished runs (``eval.json`` + ``run_config.yaml`` under a folder) collected into test accuracy
per architecture and task, with the papers' numbers beside them, as markdown, JSON and a PNG bar chart.

A run counts when its ``eval.json`` names one of the six LRA tasks. Its architecture is the run config's
``model.model_type`` (``final/config.json`` when there is no run config). When several runs share an
architecture and a task, the newest ``eval.json`` is the cell (all of them are listed in the JSON). A cell is
marked ``*`` when the run's task settings are not the benchmark's: generated data where LRA has released files
(Pathfinder, Path-X), or any task setting changed from its default other than the data folder (shorter ListOps,
fewer Pathfinder images, ...); the JSON lists what differs. The average is over the tasks a row has, with the
count beside it (the LRA paper's Transformer average, 54.39, is over five tasks: it failed Path-X).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ...common import atomic_write_text

TASKS = ("lra_listops", "lra_text", "lra_retrieval", "lra_image", "lra_pathfinder", "lra_pathx")
TASK_TITLES = {"lra_listops": "ListOps", "lra_text": "Text", "lra_retrieval": "Retrieval", "lra_image": "Image",
               "lra_pathfinder": "Path", "lra_pathx": "Path-X"}

# accuracy %, from the papers (REFERENCE.md, "LRA and EnWik8 anchors"); None = the model failed the task (✗)
PUBLISHED = {
    "Transformer (LRA paper)": (36.37, 64.27, 57.46, 42.44, 71.40, None),
    "S4 v2": (59.60, 86.82, 90.90, 88.65, 94.20, 96.35),
    "S5": (62.15, 89.31, 91.40, 88.00, 95.33, 98.58),
    "MEGA": (63.14, 90.43, 91.25, 90.44, 96.01, 97.98),
}

# settings that only say where the data is, or how the released data is read: never a deviation
NEUTRAL_FIELDS = {"data_dir", "hub_dataset", "seed", "split_seed"}


def default_settings(task_name: str) -> dict:
    from .. import get_task_class

    return dataclasses.asdict(get_task_class(task_name).Settings())


def deviations(task_settings: dict) -> list[str]:
    """What makes a run's task differ from the benchmark (empty: the benchmark setting)."""
    name = task_settings.get("name")
    defaults = default_settings(name)
    out = []
    for key, value in task_settings.items():
        if key == "name" or key in NEUTRAL_FIELDS or key not in defaults:
            continue
        if value != defaults[key]:
            out.append(f"{key}={value} (benchmark: {defaults[key]})")
    if name in ("lra_pathfinder", "lra_pathx") and task_settings.get("data_dir") is None:
        out.insert(0, "generated images (not the released Pathfinder data)")
    return out  # ListOps from the generator with LRA's settings is the benchmark's distribution: not marked


def _model_type(run_dir: Path) -> str | None:
    import yaml

    cfg = run_dir / "run_config.yaml"
    if cfg.is_file():
        data = yaml.safe_load(cfg.read_text()) or {}
        model = data.get("model") or {}
        if model.get("model_type"):
            return str(model["model_type"])
    final = run_dir / "final" / "config.json"
    if final.is_file():
        return json.loads(final.read_text()).get("model_type")
    return None


def collect_runs(root: str | Path) -> list[dict]:
    """Every finished LRA run below ``root``: ``{run, arch, task, accuracy, settings, deviations, mtime}``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--runs: {str(root)!r} is not a folder; train with "
                                f"python train.py configs/lra/<task>/<arch>.yaml (runs go to runs/lra/...)")
    runs = []
    for path in sorted(root.rglob("eval.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        settings = result.get("task") or {}
        task = settings.get("name")
        metrics = result.get("metrics") or {}
        if task not in TASKS or "accuracy" not in metrics:
            continue
        arch = _model_type(path.parent) or "?"
        runs.append({"run": str(path.parent), "arch": arch, "task": task, "accuracy": float(metrics["accuracy"]),
                     "num_targets": metrics.get("num_targets"), "step": result.get("step"),
                     "train_time_s": result.get("train_time_s"), "settings": settings,
                     "deviations": deviations(settings), "mtime": path.stat().st_mtime})
    return runs


def build_table(runs: list[dict]) -> dict:
    """``{"rows": {arch: {task: cell}}, "published": ..., "runs": runs}``; a cell is the newest run's."""
    rows: dict[str, dict] = {}
    for r in sorted(runs, key=lambda r: r["mtime"]):
        rows.setdefault(r["arch"], {})[r["task"]] = {"accuracy": r["accuracy"], "run": r["run"],
                                                     "marked": bool(r["deviations"])}
    for cells in rows.values():
        values = [100 * c["accuracy"] for c in cells.values()]
        cells["average"] = {"accuracy_pct": sum(values) / len(values), "tasks": len(values)}
    published = {}
    for name, scores in PUBLISHED.items():
        present = [s for s in scores if s is not None]
        published[name] = {**{t: s for t, s in zip(TASKS, scores)},
                           "average": {"accuracy_pct": sum(present) / len(present), "tasks": len(present)}}
    return {"rows": rows, "published": published, "runs": runs}


def to_markdown(table: dict) -> str:
    head = "| model | " + " | ".join(TASK_TITLES[t] for t in TASKS) + " | avg |"
    lines = [head, "|" + "---|" * (len(TASKS) + 2)]
    for arch in sorted(table["rows"]):
        cells = table["rows"][arch]
        out = []
        for t in TASKS:
            c = cells.get(t)
            out.append("—" if c is None else f"{100 * c['accuracy']:.2f}{'*' if c['marked'] else ''}")
        avg = cells["average"]
        out.append(f"{avg['accuracy_pct']:.2f} ({avg['tasks']})")
        lines.append(f"| `{arch}` (seqzoo) | " + " | ".join(out) + " |")
    for name, scores in table["published"].items():
        out = ["✗" if scores[t] is None else f"{scores[t]:.2f}" for t in TASKS]
        avg = scores["average"]
        out.append(f"{avg['accuracy_pct']:.2f} ({avg['tasks']})")
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    notes = ["", "Test accuracy (%). seqzoo rows: the newest finished run per cell; avg over the tasks run "
                 "(count in parentheses). Published rows: the papers (Path-X ✗ = failed, not in the average)."]
    marked = [r for r in table["runs"] if r["deviations"]]
    if marked:
        notes.append("`*` not the benchmark setting:")
        seen = set()
        for r in sorted(marked, key=lambda r: (r["task"], r["arch"])):
            key = (r["arch"], r["task"])
            if key in seen or table["rows"][r["arch"]][r["task"]]["run"] != r["run"]:
                continue
            seen.add(key)
            notes.append(f"- {r['arch']} / {TASK_TITLES[r['task']]} ({r['run']}): {'; '.join(r['deviations'])}")
    return "\n".join(lines + notes) + "\n"


def plot(table: dict, path: str | Path) -> None:
    """Grouped bars per task: seqzoo's architectures (solid) and the papers' models (hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(f"{a} (seqzoo)", [None if table["rows"][a].get(t) is None else 100 * table["rows"][a][t]["accuracy"]
                                  for t in TASKS], False) for a in sorted(table["rows"])]
    series += [(name, [scores[t] for t in TASKS], True) for name, scores in table["published"].items()]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, values, published) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(TASKS))]
        heights = [v if v is not None else 0.0 for v in values]
        ax.bar(xs, heights, width, label=name, hatch="//" if published else None, alpha=0.6 if published else 0.95,
               edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(TASKS)))
    ax.set_xticklabels([TASK_TITLES[t] for t in TASKS])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", linewidth=0.5, linestyle=":")
    ax.set_title("Long Range Arena: seqzoo runs (solid; * settings in the table) and published (hatched)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(runs_dir: str | Path, output_dir: str | Path | None = None) -> tuple[str, dict, Path]:
    """Collect, write ``lra_table.md`` / ``.json`` / ``.png`` into ``output_dir`` (default ``runs_dir``)."""
    table = build_table(collect_runs(runs_dir))
    out = Path(output_dir) if output_dir is not None else Path(runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table)
    atomic_write_text(out / "lra_table.md", markdown)
    atomic_write_text(out / "lra_table.json", json.dumps(table, indent=2, default=str) + "\n")
    plot(table, out / "lra_table.png")
    return markdown, table, out
