"""The Task interface: a task builds its train / valid / test sets, says which head it needs, pads and collates
batches, and computes its metrics.

A task is a subclass of :class:`Task` with

- ``name``: the registry name (``task.name`` in a config, ``--task`` in the eval CLI);
- ``head``: ``"causal-lm"`` (``AutoModelForCausalLM``) or ``"classification"``
  (``AutoModelForSequenceClassification``, with ``num_labels``);
- ``Settings``: a dataclass of its parameters (every field is a config key, ``task.FIELD=value``);
- ``generate(split)``: the examples of one split, a dict of columns (``input_ids`` and ``labels``, one row per
  example) or a ``datasets.Dataset``.

The base class caches each split on disk through ``datasets`` (``save_to_disk``, written to a temporary
folder and renamed into place) under a key computed from the task name, its data version and the settings
that split depends on, so the same settings never generate twice and different settings never collide.

Labels follow the Hugging Face causal-LM convention: ``labels`` has the shape of ``input_ids`` and the model
*shifts* them, so the logits at position ``t`` are scored against ``labels[t + 1]``; positions labelled
``-100`` are ignored by both the loss and the metrics. Classification labels are one integer per example.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

IGNORE_INDEX = -100
SETTINGS_FILE = "seqzoo_task.json"  # written beside a saved model: the task it was trained on
SPLITS = ("train", "valid", "test")


def default_cache_dir() -> Path:
    env = os.environ.get("SEQZOO_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seqzoo" / "datasets"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Task(abc.ABC):
    name: ClassVar[str]
    head: ClassVar[Literal["causal-lm", "classification"]]
    Settings: ClassVar[type]
    data_version: ClassVar[int] = 1  # bump when generate() changes, so old caches are not reused
    primary_metric: ClassVar[str] = "accuracy"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "accuracy")  # the keys metric_sums returns

    def __init__(self, settings: Any = None, cache_dir: str | Path | None = None):
        if settings is None:
            settings = self.Settings()
        elif isinstance(settings, dict):
            from ..config import build_dataclass

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

    def model_config_defaults(self) -> dict:
        """Config fields the task fills in when the model section does not set them."""
        out = {}
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        if self.max_length is not None:
            out["max_position_embeddings"] = self.max_length
        if self.head == "classification":
            out["num_labels"] = self.num_labels
        return out

    def check_model_config(self, config, where: str = "model") -> None:
        """Raise ValueError when the model cannot run this task (vocab too small, sequence too long)."""
        from ..config import ConfigError

        vocab = getattr(config, "vocab_size", None)
        if self.vocab_size is not None and vocab is not None and vocab < self.vocab_size:
            raise ConfigError(f"{where}.vocab_size: the model has {vocab} token ids but task {self.name!r} uses "
                              f"{self.vocab_size}; expected vocab_size >= {self.vocab_size}")
        max_pos = getattr(config, "max_position_embeddings", None)
        if self.max_length is not None and max_pos is not None and max_pos < self.max_length:
            raise ConfigError(f"{where}.max_position_embeddings: {max_pos} is shorter than the task's sequences "
                              f"({self.max_length} tokens)")
        if self.head == "classification":
            n = getattr(config, "num_labels", None)
            if n != self.num_labels:
                raise ConfigError(f"{where}.num_labels: the model has {n} labels, task {self.name!r} "
                                  f"needs {self.num_labels}")

    def auto_model_class(self):
        import transformers

        if self.head == "causal-lm":
            return transformers.AutoModelForCausalLM
        return transformers.AutoModelForSequenceClassification

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
                with _quiet_datasets():
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
        """Pad ``input_ids`` (with ``pad_token_id``) and, for causal LM, ``labels`` (with -100) to the longest
        example on the right; ``attention_mask`` marks the real tokens."""
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        length = max(len(x) for x in ids)
        batch_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, x in enumerate(ids):
            batch_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        out = {"input_ids": batch_ids, "attention_mask": mask}
        if self.head == "causal-lm":
            labels = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
            for i, e in enumerate(examples):
                lab = torch.as_tensor(e["labels"], dtype=torch.long)
                labels[i, : len(lab)] = lab
        else:
            labels = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        out["labels"] = labels
        return out

    def num_target_tokens(self, batch: dict) -> int:
        """Tokens the model reads in ``batch`` (for tokens/s)."""
        return int(batch["attention_mask"].sum())

    # ---- metrics ------------------------------------------------------------------------------------------

    def metric_sums(self, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Per-batch sufficient statistics: ``{metric: tensor([sum, count])}`` (float64), summed over batches
        and processes, then divided by :meth:`finalize`. Default: loss (mean cross-entropy, nats) and accuracy
        over the labelled positions; causal-LM logits at ``t`` are scored against ``labels[t + 1]``."""
        labels = batch["labels"]
        if self.head == "causal-lm":
            logits = logits[:, :-1]
            labels = labels[:, 1:]
        logits = logits.float().reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1).to(logits.device)
        keep = labels != IGNORE_INDEX
        logits, labels = logits[keep], labels[keep]
        n = float(labels.numel())
        loss_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double() if n else 0.0
        correct = (logits.argmax(-1) == labels).sum().double() if n else 0.0
        dev = logits.device
        return {
            "loss": torch.tensor([float(loss_sum), n], dtype=torch.float64, device=dev),
            "accuracy": torch.tensor([float(correct), n], dtype=torch.float64, device=dev),
        }

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


@contextlib.contextmanager
def _quiet_datasets():
    """No "Saving the dataset" progress bars for our small generated sets."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def read_saved_settings(directory: str | Path) -> dict | None:
    """The task settings saved beside a model (``{"name": ..., field: value}``), or None."""
    path = Path(directory) / SETTINGS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
