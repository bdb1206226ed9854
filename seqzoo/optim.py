"""Optimizers and learning-rate schedules for the trainer: AdamW (torch's), Lion, warmup + cosine/linear decay.

Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675), per parameter with
gradient g, momentum m, learning rate lr and decoupled weight decay wd:

    c = beta1 * m + (1 - beta1) * g        # interpolate the momentum with the new gradient
    p = p - lr * (sign(c) + wd * p)        # the update is a sign: every coordinate moves by exactly lr
    m = beta2 * m + (1 - beta2) * g        # the momentum is tracked with a (slower) beta2

The paper's defaults are beta1 = 0.9, beta2 = 0.99; because the update has unit magnitude per coordinate, Lion
wants a learning rate about 3-10x smaller than AdamW's and a weight decay 3-10x larger.
"""

from __future__ import annotations

import math

import torch


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if not lr > 0.0:
            raise ValueError(f"Lion: lr must be positive, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be two numbers in [0, 1), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"Lion: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                g = p.grad
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                update = m.mul(beta1).add_(g, alpha=1.0 - beta1).sign_()
                p.add_(update, alpha=-lr)
                m.mul_(beta2).add_(g, alpha=1.0 - beta2)
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (embeddings and linear weights); none on biases, norm gains and other 1-D
    parameters (decaying a norm's gain towards 0 only hurts), nor on parameters a module names in its
    ``no_weight_decay`` attribute (a tuple of its own parameter names, e.g. Mamba's ``A_log`` and ``D``, as
    mamba_ssm exempts them) or tags with ``_no_weight_decay = True``. The names survive checkpoint loading,
    which may replace the Parameter objects (and their tags)."""
    exempt: set[int] = set()
    for module in model.modules():
        for name in getattr(module, "no_weight_decay", ()):
            p = getattr(module, name, None)
            if isinstance(p, torch.nn.Parameter):
                exempt.add(id(p))
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or id(p) in exempt or getattr(p, "_no_weight_decay", False)
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float = 1e-8) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if name == "lion":
        return Lion(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"train.optimizer: expected 'adamw' or 'lion', got {name!r}")


class LRSchedule:
    """The learning-rate multiplier of optimizer step ``s`` (0-based): a linear warmup that reaches 1 at the last
    warmup step, then a cosine or linear decay from 1 to ``min_ratio`` at ``total_steps``. A callable object
    (not a lambda), so ``LambdaLR.state_dict`` carries it into checkpoints."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0):
        if kind not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.lr_schedule: expected cosine, linear or constant, got {kind!r}")
        self.kind, self.total_steps, self.warmup_steps, self.min_ratio = kind, total_steps, warmup_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(kind, total_steps, warmup_steps, min_ratio))
