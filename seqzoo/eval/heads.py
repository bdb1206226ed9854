"""Heads: how a task's model is built, loaded, saved, fed a batch and scored.

The task owns its data and its metrics; the architecture owns the backbone. What sits between them -- which
model class wraps the backbone, how a collated batch becomes a model call, which logits are scored against
which labels -- is a *head*, registered here by name. A task names its head (``Task.head = "causal-lm"``);
the trainer and the eval CLI never call the model themselves, they call ``task.step(model, batch)``, which
runs ``head.forward``.

Registered heads:

- ``causal-lm``: ``AutoModelForCausalLM``; ``labels`` has the shape of ``input_ids`` and the logits at ``t``
  are scored against ``labels[t + 1]`` (the Hugging Face convention; the training loss is the model's own);
- ``classification``: ``AutoModelForSequenceClassification`` with the task's ``num_labels``; one integer label
  per example, scored against the logits of the model's pooled sequence (``config.classifier_pooling``).

A new head subclasses :class:`Head` and calls :func:`register_head`; one class is all a new kind of model call
needs. Two planned ones show the hooks:

- a *dual-encoder pair classifier* (LRA retrieval) overrides ``build`` / ``load`` / ``save`` to wrap
  ``AutoModel`` (any architecture's backbone) in a module that encodes two documents and classifies the pair,
  ``collate`` to pad both documents, and ``forward`` to call that module;
- a *segment-carrying LM evaluator* (EnWik8) subclasses ``causal-lm`` and overrides ``forward`` to pass the
  model's cache in and return the updated one as ``HeadOutput.carry``: :func:`seqzoo.eval.evaluate.evaluate`
  hands each batch's carry to the next batch's step (its task's ``eval_loader`` keeps the segments of a stream
  in order).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch

from ..common import ConfigError, unknown_name_error

IGNORE_INDEX = -100


@dataclasses.dataclass
class HeadOutput:
    """What one model call on a batch gives back."""

    loss: torch.Tensor | None  # mean loss over the batch's targets (differentiable); None when not asked for
    logits: torch.Tensor | None  # what the metrics read; None when the call did not produce them
    carry: Any = None  # state for the next batch of the same stream (a segment-carrying evaluator), else None


class Head(abc.ABC):
    """The model side of a task. Heads hold no state: one instance serves every task that names it.

    Override what differs from the defaults; every method gets the task, so a head can read the task's
    settings (``task.num_labels``, ``task.pad_token_id``, ``task.settings``)."""

    name: ClassVar[str]
    # the transformers Auto class (name) the default build / load use; None for a head that builds its own
    auto_class: ClassVar[str | None] = None

    # ---- the model ------------------------------------------------------------------------------------------

    def config_defaults(self, task) -> dict:
        """Config fields the head fills in when the model section does not set them (e.g. ``num_labels``)."""
        return {}

    def pretrained_overrides(self, task) -> dict:
        """Config fields forced onto a checkpoint's config when fine-tuning it for ``task``."""
        return {}

    def check_config(self, task, config, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where.FIELD`` when ``config`` cannot serve this head."""

    def auto_model_class(self):
        if self.auto_class is None:
            raise TypeError(f"head {self.name!r} builds its own model; it has no transformers Auto class")
        import transformers

        return getattr(transformers, self.auto_class)

    def build(self, config, task) -> torch.nn.Module:
        """A freshly initialized model for ``config`` (seeded by the caller)."""
        return self.auto_model_class().from_config(config)

    def load(self, path: str, task, **overrides) -> torch.nn.Module:
        """The model saved in ``path`` by :meth:`save`, with config ``overrides``."""
        from ..common import quiet_progress_bars

        with quiet_progress_bars():
            return self.auto_model_class().from_pretrained(path, **{**self.pretrained_overrides(task), **overrides})

    def save(self, model: torch.nn.Module, directory: str, state_dict: dict | None = None) -> None:
        """Write ``model`` to ``directory`` so that :meth:`load` reads it back. ``state_dict`` is the full state
        gathered by the trainer (under FSDP the module itself holds only shards)."""
        from ..common import quiet_progress_bars

        with quiet_progress_bars():
            model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)

    # ---- a batch ---------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def collate(self, task, examples: list[dict]) -> dict:
        """Stack examples into a batch of tensors (``input_ids``, ``attention_mask``, ``labels``, ...). Padding
        uses ``task.pad_token_id``; ``labels`` of -100 are never scored."""

    @abc.abstractmethod
    def forward(self, model: torch.nn.Module, batch: dict, *, loss: bool, carry: Any = None) -> HeadOutput:
        """Run ``model`` (possibly wrapped by DDP/FSDP: call it, do not unwrap it) on ``batch``. With ``loss``
        the output carries the differentiable mean loss the trainer backpropagates; ``carry`` is the previous
        batch's ``HeadOutput.carry`` during evaluation (None for the first batch and always in training)."""

    def targets(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scored pairs: ``(logits [N, C], labels [N])`` with the ignored (-100) positions removed."""
        logits = logits.float().reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1).to(logits.device)
        keep = labels != IGNORE_INDEX
        return logits[keep], labels[keep]

    def num_tokens(self, batch: dict) -> int:
        """Tokens the model reads in ``batch`` (for tokens/s)."""
        return int(batch["attention_mask"].sum())


def _pad(seqs: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors to the longest: ``(padded [B, T], mask [B, T])``."""
    length = max(len(x) for x in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, x in enumerate(seqs):
        out[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return out, mask


class CausalLMHead(Head):
    """Next-token prediction: logits at ``t`` are scored against ``labels[t + 1]`` (labels unshifted, the
    model shifts them inside its loss)."""

    name = "causal-lm"
    auto_class = "AutoModelForCausalLM"

    def collate(self, task, examples: list[dict]) -> dict:
        ids, mask = _pad([torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples], task.pad_token_id)
        labels = torch.full_like(ids, IGNORE_INDEX)  # [B, T]; padding is never a target
        for i, e in enumerate(examples):
            lab = torch.as_tensor(e["labels"], dtype=torch.long)
            labels[i, : len(lab)] = lab
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def forward(self, model, batch, *, loss, carry=None):
        extra = {"labels": batch["labels"]} if loss else {}
        # use_cache=False: one pass over whole sequences needs no decoding cache (a carrying evaluator does)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **extra)
        return HeadOutput(loss=out.loss if loss else None, logits=out.logits)

    def targets(self, logits, labels):
        return super().targets(logits[:, :-1], labels[:, 1:])  # [B, T-1, V] against the next token's label


class SequenceClassificationHead(Head):
    """One label per example from ``AutoModelForSequenceClassification`` (``num_labels`` = the task's)."""

    name = "classification"
    auto_class = "AutoModelForSequenceClassification"

    def config_defaults(self, task) -> dict:
        return {"num_labels": task.num_labels}

    def pretrained_overrides(self, task) -> dict:
        return {"num_labels": task.num_labels}

    def check_config(self, task, config, where: str) -> None:
        n = getattr(config, "num_labels", None)
        if n != task.num_labels:
            raise ConfigError(f"{where}.num_labels: the model has {n} labels, task {task.name!r} "
                              f"needs {task.num_labels}")

    def collate(self, task, examples: list[dict]) -> dict:
        ids, mask = _pad([torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples], task.pad_token_id)
        labels = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def forward(self, model, batch, *, loss, carry=None):
        extra = {"labels": batch["labels"]} if loss else {}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
        return HeadOutput(loss=out.loss if loss else None, logits=out.logits)


# --------------------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------------------

_HEADS: dict[str, Head] = {}


def register_head(head):
    """Register a :class:`Head` subclass (usable as a class decorator) or instance under its ``name``."""
    instance = head() if isinstance(head, type) and issubclass(head, Head) else head
    if not isinstance(instance, Head):
        raise TypeError(f"register_head: expected a Head subclass or instance, got {head!r}")
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_head: {type(instance).__name__} has no name (a non-empty str class attribute)")
    existing = _HEADS.get(name)
    if existing is not None and type(existing) is not type(instance):
        raise ValueError(f"register_head: a head named {name!r} is already registered ({type(existing).__name__})")
    _HEADS[name] = instance
    return head


def get_head(name: str, where: str = "head") -> Head:
    if name not in _HEADS:
        raise unknown_name_error(where, "head", name, _HEADS)
    return _HEADS[name]


def list_heads() -> list[str]:
    return sorted(_HEADS)


register_head(CausalLMHead)
register_head(SequenceClassificationHead)
