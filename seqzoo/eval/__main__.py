"""Evaluate a saved model on a task: ``python -m seqzoo.eval --model PATH [--task NAME] [--task.FIELD=value ...]``.

``PATH`` is a directory written by ``save_pretrained`` (a run's ``output_dir/final``) or a run's output_dir
(its ``final`` is used). The model is loaded by the task's head (the transformers Auto classes after
``import seqzoo`` for ``causal-lm`` and ``classification``) and run through ``task.step``, as in the trainer.
By default the task and its settings are the ones saved beside the model (``seqzoo_task.json``, written by
the trainer), so evaluating a checkpoint needs no memory of how it was trained; ``--task`` and
``--task.FIELD=value`` flags override them. The metrics are printed as JSON and written to ``--output``
(default ``PATH/eval_<task>_<split>.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import yaml

from ..common import ConfigError, atomic_write_text, autocast_dtype, resolve_precision
from ..common import resolve_model_dir as _resolve_model_dir
from ..fields import build_dataclass


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(
        prog="seqzoo-eval",
        description="Evaluate a saved seqzoo model on a task's test split.",
        epilog="Task fields: --task.FIELD=value (e.g. --task.num_kv_pairs=8); unknown fields are errors that list "
               "the valid ones. Without --task, the task saved beside the model is used.")
    p.add_argument("--model", required=True, help="a save_pretrained directory, or a run's output_dir")
    p.add_argument("--task", default=None, help="task name (default: the one saved with the model)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on a GPU that supports it, fp32 otherwise")
    p.add_argument("--cache-dir", default=None, help="task data cache (default: $SEQZOO_CACHE or "
                                                     "~/.cache/seqzoo/datasets)")
    p.add_argument("--output", default=None, help="where to write the JSON (default: MODEL/eval_TASK_SPLIT.json); "
                                                  "'-' writes nothing")
    args, rest = p.parse_known_args(argv)
    overrides: dict = {}
    i = 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--task."):
            p.error(f"unrecognized argument {item!r}; task fields are given as --task.FIELD=value")
        key = item[len("--task."):]
        if "=" in key:
            key, text = key.split("=", 1)
        else:
            if i + 1 >= len(rest):
                p.error(f"{item}: expected a value (--task.FIELD=value)")
            i += 1
            text = rest[i]
        if not key:
            p.error(f"{item!r}: expected --task.FIELD=value")
        try:
            overrides[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            overrides[key] = text
        i += 1
    if args.batch_size < 1:
        p.error(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if args.max_batches is not None and args.max_batches < 1:
        p.error(f"--max-batches: expected a positive integer, got {args.max_batches}")
    return args, overrides


def resolve_model_dir(path: str) -> Path:
    return _resolve_model_dir(path, where="--model")


def run(args, overrides: dict) -> dict:
    import torch

    import seqzoo  # noqa: F401  (registers the architectures with the Auto classes)

    from . import get_task_class, read_saved_settings
    from .evaluate import evaluate

    model_dir = resolve_model_dir(args.model)
    saved = read_saved_settings(model_dir)
    name = args.task or (saved or {}).get("name")
    if name is None:
        from . import list_tasks

        raise ConfigError(f"--task: {str(model_dir)!r} has no saved task settings (seqzoo_task.json); name the task "
                          f"with --task (one of {', '.join(list_tasks())})")
    task_cls = get_task_class(name, where="--task")
    settings = {}
    if saved and saved.get("name") == name:
        known = {f.name for f in dataclasses.fields(task_cls.Settings)}
        settings = {k: v for k, v in saved.items() if k != "name" and k in known}
    settings.update(overrides)
    settings_obj = build_dataclass(task_cls.Settings, settings, "task")
    task = task_cls(settings_obj, cache_dir=args.cache_dir)

    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ConfigError(f"--device: {args.device!r} is not a device ({e})") from None
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: {args.device!r} asked for but CUDA is not available")
    dtype = autocast_dtype(resolve_precision(args.precision, device.type))

    import transformers

    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    task.check_model_config(config, where="the model's config")
    model = task.load_model(model_dir).to(device)
    t0 = time.time()
    ds = task.dataset(args.split)
    loader = task.eval_loader(ds, args.batch_size)
    metrics = evaluate(model, task, loader, device=device, max_batches=args.max_batches,
                       autocast_dtype=dtype, progress=sys.stderr.isatty())
    result = {"model": str(model_dir), "model_type": config.model_type, "task": task.settings_dict(),
              "primary_metric": task.primary_metric,
              "split": args.split, "num_examples": len(ds) if args.max_batches is None else
              min(len(ds), args.max_batches * args.batch_size), "metrics": metrics,
              "eval_time_s": time.time() - t0}
    return result


def summary_line(result: dict) -> str:
    """``seqzoo-eval: bytes_lm test: bpb 1.836 ± 0.241 (95% CI over segments), loss 1.273 (23306 targets)``."""
    metrics = result["metrics"]
    primary = result.get("primary_metric")
    parts = []
    for key in [primary] + [k for k in metrics if k != primary]:
        value = metrics.get(key)
        if not isinstance(value, float) or "/" in key or key.endswith("_ci95") or key.startswith("num_"):
            continue
        ci = metrics.get(f"{key}_ci95")
        parts.append(f"{key} {value:.4f}" + (f" ± {ci:.4f} (95% CI over segments)" if isinstance(ci, float) else ""))
    targets = metrics.get("num_targets")
    return (f"seqzoo-eval: {result['task'].get('name', '?')} {result['split']}: {', '.join(parts)}"
            + (f" ({int(targets)} targets)" if isinstance(targets, (int, float)) else ""))


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        result = run(args, overrides)
        text = json.dumps(result, indent=2)
        print(text)
        print(summary_line(result), file=sys.stderr)
        if args.output != "-":
            out = Path(args.output) if args.output else (
                resolve_model_dir(args.model) / f"eval_{result['task']['name']}_{args.split}.json")
            atomic_write_text(out, text + "\n")
            print(f"seqzoo-eval: wrote {out}", file=sys.stderr)
    except ConfigError as e:
        print(f"seqzoo-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
