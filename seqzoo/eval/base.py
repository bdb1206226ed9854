"""The Task interface: a task builds its train / valid / test sets, names the head its model needs, and owns
the model call on a batch (``Task.step``) and its metrics.

Adding a task
-------------

A task is a subclass of :class:`Task`, registered with :func:`seqzoo.eval.register_task`. It defines

- ``name``: the registry name (``task.name`` in a config, ``--task`` in the eval CLI);
- ``Settings``: a dataclass of its parameters (every field is a config key, ``task.FIELD=value``, checked for
  type; ``validate_settings`` raises :class:`~seqzoo.common.ConfigError` for values that cannot work);
- ``generate(split)``: the examples of one split (``train``, ``valid``, ``test``), a dict of columns or a
  ``datasets.Dataset``;
- ``head``: the name of a registered head (:mod:`seqzoo.eval.heads`): ``"causal-lm"``, ``"classification"``,
  or one the task's module registers. The head says which model class wraps the backbone, how a batch is
  collated and fed to the model, and which logits are scored against which labels;

and may override

- ``vocab_size`` / ``max_length`` / ``num_labels`` / ``tokenizer()`` / ``model_config_defaults()``: what the
  model config must satisfy (checked before a run writes anything) and the defaults it gets from the task;
- ``split_params(split)`` (the cache key of a split), ``split_size(split)`` (known sizes, checked early);
- ``collate(examples)`` (default: the head's), ``metric_sums(logits, batch)`` (default: mean cross-entropy and
  accuracy over the head's targets), ``metric_names``, ``primary_metric``;
- ``step(model, batch)``: the one model call the trainer and the eval CLI make. Default: the head's
  ``forward`` and then ``metric_sums``. A task whose metric is not a function of the logits (bits per byte
  over a byte stream, say) overrides ``metric_sums``; one that needs a different call registers a head;
- ``eval_loader(dataset, batch_size, rank, world)``: how a split is cut into evaluation batches per process.
  The default interleaves examples over processes; a segment-carrying evaluator keeps each stream's segments
  in order (its head's ``forward`` returns the model cache as ``HeadOutput.carry`` and ``evaluate`` hands it to
  the next batch).

The base class caches each split on disk through ``datasets`` (``save_to_disk``, written to a temporary
folder and renamed into place) under a key computed from the task name, its data version and the settings
that split depends on, so the same settings never generate twice and different settings never collide.

Metrics are sums: ``metric_sums`` returns ``{name: tensor([sum, count])}`` (float64) per batch; the sums are
added over batches and processes and divided once at the end (:meth:`Task.finalize`), so a multi-process
evaluation equals a single-process one.

Labels follow the Hugging Face causal-LM convention: ``labels`` has the shape of ``input_ids`` and the model
*shifts* them, so the logits at position ``t`` are scored against ``labels[t + 1]``; positions labelled
``-100`` are ignored by both the loss and the metrics. Classification labels are one integer per example.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..common import ConfigError, atomic_write_text, quiet_progress_bars
from ..fields import build_dataclass
from .heads import IGNORE_INDEX, Head, get_head  # noqa: F401  (IGNORE_INDEX: re-exported)

SETTINGS_FILE = "seqzoo_task.json"  # written beside a saved model: the task it was trained on
SPLITS = ("train", "valid", "test")


def default_cache_dir() -> Path:
    env = os.environ.get("SEQZOO_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seqzoo" / "datasets"


@dataclasses.dataclass
class StepOutput:
    """What :meth:`Task.step` returns for one batch."""

    loss: torch.Tensor | None  # the differentiable mean loss (when asked for): what the trainer backpropagates
    sums: dict[str, torch.Tensor] | None  # {metric: tensor([sum, count])} (when asked for), see metric_sums
    carry: Any = None  # the head's state for the next batch of the same stream (segment-carrying evaluation)


class Task(abc.ABC):
    name: ClassVar[str]
    head: ClassVar[str]  # a registered head's name (seqzoo.eval.heads): "causal-lm", "classification", ...
    Settings: ClassVar[type]
    data_version: ClassVar[int] = 1  # bump when generate() changes, so old caches are not reused
    primary_metric: ClassVar[str] = "accuracy"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "accuracy")  # the keys metric_sums returns
    minimize: ClassVar[tuple[str, ...]] = ("loss",)  # metrics where lower is better (eval.require: <=)

    def train_metrics(self, mean_loss: float) -> dict[str, float]:
        """Metrics that follow from the mean training loss of a logging window, shown in the progress bar and
        written to metrics.jsonl beside it (a byte-level LM: bits per byte = loss / ln 2). None by default."""
        return {}

    def better(self, name: str, value: float, threshold: float) -> bool:
        """Whether ``value`` of metric ``name`` meets ``threshold`` (>= by default, <= for :attr:`minimize`)."""
        return value <= threshold if name in self.minimize else value >= threshold

    def __init__(self, settings: Any = None, cache_dir: str | Path | None = None):
        if settings is None:
            settings = self.Settings()
        elif isinstance(settings, dict):
            settings = build_dataclass(self.Settings, settings, "task")
        elif not isinstance(settings, self.Settings):
            raise TypeError(f"settings: expected {self.Settings.__name__} or a dict, got {type(settings).__name__}")
        self.validate_settings(settings)
        self.settings = settings
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    # ---- what a task defines ------------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings) -> None:
        """Raise ``ConfigError`` naming the field when the settings cannot generate data."""

    @abc.abstractmethod
    def generate(self, split: str):
        """The examples of ``split``: a dict of equal-length columns, or a ``datasets.Dataset``."""

    def split_params(self, split: str) -> dict:
        """The settings that determine ``split``'s data (the cache key). Default: all of them."""
        return dataclasses.asdict(self.settings)

    def split_size(self, split: str) -> int | None:
        """The number of examples of ``split`` when known without generating it (checked before a run writes
        anything); None when unknown."""
        return None

    @property
    def num_labels(self) -> int | None:
        """Classification tasks: the number of classes."""
        return None

    @property
    def max_length(self) -> int | None:
        """The longest ``input_ids`` the task produces (checked against max_position_embeddings)."""
        return None

    @property
    def vocab_size(self) -> int | None:
        """The number of token ids the task uses (the model's vocab_size must be at least this)."""
        return None

    def tokenizer(self):
        """The tokenizer saved with the model, for tasks that have one (text tasks); None otherwise."""
        return None

    pad_token_id: ClassVar[int] = 0

    # ---- model side ---------------------------------------------------------------------------------------

    @property
    def head_spec(self) -> Head:
        """The registered :class:`~seqzoo.eval.heads.Head` named by ``head``."""
        return get_head(self.head, where=f"task {self.name!r}: head")

    def model_config_defaults(self) -> dict:
        """Config fields the task fills in when the model section does not set them (with the head's, e.g.
        ``num_labels``)."""
        out = {}
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        if self.max_length is not None:
            out["max_position_embeddings"] = self.max_length
        out.update(self.head_spec.config_defaults(self))
        return out

    def check_model_config(self, config, where: str = "model") -> None:
        """Raise ConfigError when the model cannot run this task (vocab too small, sequence too long, the head's
        own checks such as the number of labels)."""
        vocab = getattr(config, "vocab_size", None)
        if self.vocab_size is not None and vocab is not None and vocab < self.vocab_size:
            raise ConfigError(f"{where}.vocab_size: the model has {vocab} token ids but task {self.name!r} uses "
                              f"{self.vocab_size}; expected vocab_size >= {self.vocab_size}")
        max_pos = getattr(config, "max_position_embeddings", None)
        if self.max_length is not None and max_pos is not None and max_pos < self.max_length:
            raise ConfigError(f"{where}.max_position_embeddings: {max_pos} is shorter than the task's sequences "
                              f"({self.max_length} tokens)")
        self.head_spec.check_config(self, config, where)

    def auto_model_class(self):
        """The transformers Auto class of the head (for heads built on one)."""
        return self.head_spec.auto_model_class()

    def build_model(self, config) -> torch.nn.Module:
        """A freshly initialized model for ``config`` (the head's)."""
        return self.head_spec.build(config, self)

    def load_model(self, path: str | Path, **overrides) -> torch.nn.Module:
        """The model saved in ``path`` (by :meth:`save_model`), with config ``overrides``."""
        return self.head_spec.load(str(path), self, **overrides)

    def save_model(self, model: torch.nn.Module, directory: str | Path, state_dict: dict | None = None) -> None:
        """Write ``model`` (unwrapped) to ``directory``: the head's weights and config, the tokenizer when the
        task has one, and the task settings (``seqzoo_task.json``)."""
        self.head_spec.save(model, str(directory), state_dict)
        tok = self.tokenizer()
        if tok is not None:
            tok.save_pretrained(str(directory))
        self.save_settings(directory)

    # ---- the model call -----------------------------------------------------------------------------------

    def step(self, model: torch.nn.Module, batch: dict, *, loss: bool = True, metrics: bool = True,
             carry: Any = None) -> StepOutput:
        """Run ``model`` on one collated ``batch`` (already on the model's device): the mean loss to train on
        (``loss``) and the metric sums of the batch (``metrics``). The trainer asks for the loss only, the
        evaluation for the metrics only. ``model`` may be wrapped by DDP/FSDP; ``carry`` is the previous
        batch's ``StepOutput.carry`` in an evaluation pass (None at the start, and always in training)."""
        out = self.head_spec.forward(model, batch, loss=loss, carry=carry)
        sums = self.metric_sums(out.logits, batch) if metrics else None
        return StepOutput(loss=out.loss, sums=sums, carry=out.carry)

    def eval_loader(self, dataset, batch_size: int, rank: int = 0, world: int = 1):
        """The evaluation batches of process ``rank`` of ``world``: every example scored by exactly one process,
        every process running the same number of batches (see :mod:`seqzoo.eval.evaluate`)."""
        from .evaluate import eval_loader

        return eval_loader(self, dataset, batch_size, rank, world)

    # ---- data ---------------------------------------------------------------------------------------------

    def cache_key(self, split: str) -> str:
        payload = {"task": self.name, "version": self.data_version, "split": split, **self.split_params(split)}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.name}-{split}-{digest}"

    def cache_path(self, split: str) -> Path:
        return self.cache_dir / self.cache_key(split)

    def dataset(self, split: str):
        """The ``datasets.Dataset`` of ``split`` (torch format), generated on first use and cached on disk."""
        import datasets

        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        path = self.cache_path(split)
        if not (path / "dataset_info.json").is_file():
            data = self.generate(split)
            ds = data if isinstance(data, datasets.Dataset) else datasets.Dataset.from_dict(data)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
            try:
                with quiet_progress_bars():
                    ds.save_to_disk(str(tmp))
                (tmp / "seqzoo_cache.json").write_text(json.dumps(
                    {"task": self.name, "split": split, "version": self.data_version, **self.split_params(split)},
                    indent=2, sort_keys=True))
                try:
                    os.rename(tmp, path)
                except OSError:
                    if not (path / "dataset_info.json").is_file():  # lost a race is fine; anything else is not
                        raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        ds = datasets.load_from_disk(str(path))
        return ds.with_format("torch")

    def collate(self, examples: list[dict]) -> dict:
        """A batch from a list of examples: the head's collate (causal LM: ``input_ids`` padded with
        ``pad_token_id`` and ``labels`` with -100 on the right, ``attention_mask`` marking the real tokens)."""
        return self.head_spec.collate(self, examples)

    def num_target_tokens(self, batch: dict) -> int:
        """Tokens the model reads in ``batch`` (for tokens/s)."""
        return self.head_spec.num_tokens(batch)

    # ---- metrics ------------------------------------------------------------------------------------------

    def metric_sums(self, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Per-batch sufficient statistics: ``{metric: tensor([sum, count])}`` (float64), summed over batches
        and processes, then divided by :meth:`finalize`. Default: loss (mean cross-entropy, nats) and accuracy
        over the head's targets (causal LM: the logits at ``t`` against ``labels[t + 1]``; -100 is ignored)."""
        logits, labels = self.head_spec.targets(logits, batch["labels"])
        # tensors on the logits' device all the way: no host sync per batch
        n = torch.tensor(float(labels.numel()), dtype=torch.float64, device=logits.device)
        if labels.numel():
            loss_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            correct = (logits.argmax(-1) == labels).sum().double()
        else:
            loss_sum = correct = torch.zeros((), dtype=torch.float64, device=logits.device)
        return {"loss": torch.stack([loss_sum, n]), "accuracy": torch.stack([correct, n])}

    @staticmethod
    def add_sums(total: dict | None, sums: dict) -> dict:
        if total is None:
            return {k: v.clone() for k, v in sums.items()}
        for k, v in sums.items():
            total[k] += v
        return total

    @staticmethod
    def finalize(total: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for k, v in total.items():
            s, n = float(v[0]), float(v[1])
            out[k] = s / n if n else float("nan")
        out["num_targets"] = int(float(next(iter(total.values()))[1])) if total else 0
        return out

    # ---- settings beside a model --------------------------------------------------------------------------

    def settings_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self.settings)}

    def save_settings(self, directory: str | Path) -> Path:
        path = Path(directory) / SETTINGS_FILE
        atomic_write_text(path, json.dumps(self.settings_dict(), indent=2) + "\n")
        return path


def read_saved_settings(directory: str | Path) -> dict | None:
    """The task settings saved beside a model (``{"name": ..., field: value}``), or None."""
    path = Path(directory) / SETTINGS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
