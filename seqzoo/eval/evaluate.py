"""Run a model over one split of a task and compute the task's metrics (used by the trainer and the eval CLI).

Each process evaluates a disjoint slice of the split (examples ``rank, rank + world, ...``), so nothing is
counted twice; the metric sums are then added up across processes. The model must be the *unwrapped* model
(no DDP wrapper), so that processes with different numbers of batches never wait on each other inside forward.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader, Subset

from .base import Task


def eval_loader(task: Task, dataset, batch_size: int, rank: int = 0, world: int = 1) -> DataLoader:
    if world > 1:
        dataset = Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, loader: DataLoader, *, device: torch.device | None = None,
             max_batches: int | None = None, autocast_dtype: torch.dtype | None = None,
             reduce=None, progress: bool = False) -> dict[str, float]:
    """Metrics of ``model`` over ``loader``. ``reduce(tensor) -> tensor`` sums a tensor across processes
    (``accelerator.reduce(t, "sum")``); None for a single process."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    total = None
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
            batch = {k: v.to(device) for k, v in batch.items()}
            with ctx:
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            total = task.add_sums(total, task.metric_sums(out.logits, batch))
    finally:
        model.train(was_training)
    if total is None:  # this process had no examples (more processes than examples)
        zero = torch.zeros(2, dtype=torch.float64, device=device)
        total = {k: zero.clone() for k in task.metric_names}
    if reduce is not None:
        keys = sorted(total)
        stacked = reduce(torch.stack([total[k] for k in keys]))
        total = {k: stacked[i] for i, k in enumerate(keys)}
    return task.finalize(total)
