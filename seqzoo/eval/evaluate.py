"""Run a model over one split of a task and compute the task's metrics (used by the trainer and the eval CLI).

The model is called only through ``task.step`` (the task's head decides how a batch becomes a model call); the
``carry`` a step returns is handed to the next batch's step, so a head can carry state (the model's cache)
across the consecutive segments of one stream.

By default (:func:`eval_loader`) each process evaluates a disjoint slice of the split (examples
``rank, rank + world, ...``, padded with label-less copies to equal length), so nothing is counted twice and
every process runs the same number of forward passes (a DDP/FSDP-wrapped model may synchronize inside
forward); the metric sums are then added up across processes.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.utils.data import DataLoader

from .base import IGNORE_INDEX, Task


class _PaddedShard(torch.utils.data.Dataset):
    """Examples ``rank, rank + world, ...`` of ``dataset``, padded to ``length`` with a copy of an example whose
    labels are all -100 (it counts in no metric), so every process runs the same number of batches."""

    def __init__(self, dataset, rank: int, world: int, length: int):
        self.dataset, self.indices, self.length = dataset, list(range(rank, len(dataset), world)), length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if i < len(self.indices):
            return self.dataset[self.indices[i]]
        ex = dict(self.dataset[0])
        ex["labels"] = torch.full_like(torch.as_tensor(ex["labels"]), IGNORE_INDEX)
        return ex


def eval_loader(task: Task, dataset, batch_size: int, rank: int = 0, world: int = 1) -> DataLoader:
    """A loader over this process's share of ``dataset``: every example is scored by exactly one process, and
    all processes get the same number of batches (so a DDP/FSDP-wrapped model can run in lockstep)."""
    if world > 1:
        dataset = _PaddedShard(dataset, rank, world, math.ceil(len(dataset) / world))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, loader: DataLoader, *, device: torch.device | None = None,
             max_batches: int | None = None, autocast_dtype: torch.dtype | None = None,
             reduce=None, progress: bool = False) -> dict[str, float]:
    """Metrics of ``model`` over ``loader`` (from ``task.eval_loader``). ``reduce(tensor) -> tensor`` sums a
    tensor across processes (``accelerator.reduce(t, "sum")``); None for a single process."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    total = None
    carry = None
    diagnostics: dict[str, float] = {}
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=f"eval {task.name}", leave=False,
                  total=min(len(loader), max_batches) if max_batches else len(loader))
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    try:
        for i, batch in enumerate(it):
            if max_batches is not None and i >= max_batches:
                break
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with ctx:
                out = task.step(model, batch, loss=False, metrics=True, carry=carry)
            carry = out.carry
            total = task.add_sums(total, out.sums)
            if i == 0:
                with ctx:
                    diagnostics = model_diagnostics(model, batch)
    finally:
        model.train(was_training)
    if total is None:  # this process had no examples (more processes than examples)
        zero = torch.zeros(2, dtype=torch.float64, device=device)
        total = {k: zero.clone() for k in task.metric_names}
    if reduce is not None:
        keys = sorted(total)
        stacked = reduce(torch.stack([total[k] for k in keys]))
        total = {k: stacked[i] for i, k in enumerate(keys)}
    return {**task.finalize(total), **diagnostics}


def model_diagnostics(model: torch.nn.Module, batch: dict) -> dict[str, float]:
    """What a model reports about itself on a batch, beside the task's metrics: a model class may define
    ``diagnostics(input_ids, attention_mask=None) -> {name: number}`` (Spark: the measured fraction of FFN
    neurons and of keys used, per layer as ``name/layer_i``). Measured on the first evaluation batch of this
    process; it appears in metrics.jsonl, eval.json and the eval CLI's output."""
    base = getattr(model, "module", model)  # DDP / FSDP wrappers
    fn = getattr(base, "diagnostics", None)
    if fn is None or not torch.is_tensor(batch.get("input_ids")):
        return {}
    report = fn(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return {k: float(v) for k, v in report.items() if isinstance(v, (int, float))}
