"""The tasks ``enwik8`` and ``bytes_lm`` and their head ``byte-lm``: byte-level language modelling, scored in
bits per byte (the primary metric), every byte of a split exactly once and in order.

``enwik8`` reads the standard file (``task.path``: ``enwik8``, ``enwik8.zip`` or a folder holding one) with the
standard 90M / 5M / 5M split; ``bytes_lm`` reads any file or folder of text files and splits it by fraction.
Both train on seeded random windows of ``seq_len + 1`` bytes of a memory-mapped array
(:class:`~seqzoo.eval.lm.windows.TrainWindows`) and evaluate in one of two modes (``task.eval_mode``):

- ``carry``: the split is read as ``eval.batch_size`` streams (per process) in segments of ``eval_segment``
  bytes, the model's cache carrying each stream's state across segments (recurrent models);
- ``window``: sliding windows, each scoring ``eval_stride`` bytes with at least ``eval_context`` bytes before
  every scored byte (any causal model; the only exact mode for attention, whose KV cache grows with the text);
- ``auto`` (default): ``carry`` when every layer of the model keeps a fixed-size state, else ``window``
  (decided from the model config when the task is checked against it).

Why ``window`` recomputes each window instead of keeping a trimmed KV cache (Transformer-XL style): the rotary
angles are computed in fp32 from absolute positions, which lose precision far into a 5M-byte split (the fp32
spacing at 5e6 is 0.5), and the model was trained on positions below ``seq_len``. A fresh window has positions
0 .. context + stride - 2, as in training.

The data is never copied into ``datasets``: the memmap is the cache (see :mod:`seqzoo.eval.lm.corpus`), and
nothing is read until a split is used. A missing or corrupt file is found by ``split_size("train")``, which the
trainer calls before it writes anything.
"""

from __future__ import annotations

import math

import abc
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ...common import ConfigError
from ...tokenizer import SPECIAL_IDS, VOCAB_SIZE, ByteTokenizer
from ..base import Task
from ..heads import CausalLMHead, Head, HeadOutput, register_head
from .corpus import ByteCorpus, open_byte_corpus, open_enwik8
from .scoring import BPB_METRICS, bpb_sums, carries_state, finalize_bpb, lm_forward, lm_loss
from .windows import CarryBatches, TrainWindows, WindowBatches, collate_windows

NUM_BYTES = 256
EVAL_MODES = ("auto", "carry", "window")


@register_head
class ByteLMHead(CausalLMHead):
    """A causal LM over byte windows with pre-shifted ``targets`` (:mod:`seqzoo.eval.lm.windows`): the logits at
    ``t`` are scored against ``targets[t]``. With ``batch["carry_state"]`` (in-order evaluation of a recurrent
    model) the model's cache comes in as ``carry`` and the updated cache goes out as ``HeadOutput.carry``, so
    each stream's state continues from one segment to the next."""

    name = "byte-lm"

    def collate(self, task, examples: list[dict]) -> dict:
        return collate_windows(examples)

    def forward(self, model, batch, *, loss, carry=None):
        logits, cache = lm_forward(model, batch, carry)
        value = lm_loss(logits, batch["targets"]) if loss else None
        return HeadOutput(loss=value, logits=logits, carry=cache)

    def targets(self, logits, labels):
        return Head.targets(self, logits, labels)  # already shifted: no shift here

    def num_tokens(self, batch: dict) -> int:
        return batch["input_ids"].numel()  # no padding in training windows; numel() needs no host sync


@dataclass
class _EvalFields:
    seq_len: int = 512  # training window: seq_len inputs and their seq_len next bytes
    seed: int = 0  # the training windows' random offsets (their order is the trainer's, from train.seed)
    eval_mode: Literal["auto", "carry", "window"] = "auto"  # see the module docstring
    eval_segment: int | None = None  # carry: bytes per segment; None = seq_len
    eval_stride: int | None = None  # window: bytes scored per window; None = seq_len // 4
    eval_context: int | None = None  # window: bytes every scored byte sees at least (None: the window is
    # seq_len inputs, i.e. seq_len + 1 - stride); carry: bytes each stream reads before its first scored byte
    # (None = seq_len)


@dataclass
class Enwik8Settings(_EvalFields):
    path: str = "data/enwik8"  # the enwik8 file, enwik8.zip, a folder holding one, or "hub" (LTCB/enwik8 online)


@dataclass
class BytesLMSettings(_EvalFields):
    path: str = ""  # a text file, or a folder of them (required)
    pattern: str = "**/*"  # folder: the files read (a glob relative to it; hidden files are skipped)
    separator: str = "\n"  # folder: appended after each file
    valid_fraction: float = 0.05  # the last bytes of the corpus: [train | valid | test], in file order
    test_fraction: float = 0.05


class _ByteLMTask(Task):
    head = "byte-lm"
    primary_metric: ClassVar[str] = "bpb"
    metric_names: ClassVar[tuple[str, ...]] = BPB_METRICS
    minimize: ClassVar[tuple[str, ...]] = ("loss", "bpb")

    def train_metrics(self, mean_loss: float) -> dict[str, float]:
        return {"bpb": mean_loss / math.log(2)}  # the training loss is the mean NLL per byte, in nats
    pad_token_id = SPECIAL_IDS["<pad>"]

    def __init__(self, settings=None, cache_dir=None):
        super().__init__(settings, cache_dir)
        self._corpus: ByteCorpus | None = None
        self._carry: bool | None = None if self.settings.eval_mode == "auto" else self.settings.eval_mode == "carry"

    # ---- settings --------------------------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, s) -> None:
        if not isinstance(s.path, str) or not s.path:
            raise ConfigError("task.path: expected the path of the corpus (a file or a folder), got "
                              f"{s.path!r}; set it on the command line: task.path=/path/to/corpus")
        for name in ("seq_len", "eval_segment", "eval_stride", "eval_context"):
            v = getattr(s, name)
            if v is not None and v < 1:
                raise ConfigError(f"task.{name}: expected a positive integer{' or null' if name != 'seq_len' else ''}"
                                  f", got {v}")
        if s.eval_stride is not None and s.eval_context is None and s.eval_stride > s.seq_len:
            raise ConfigError(f"task.eval_stride: {s.eval_stride} is longer than task.seq_len ({s.seq_len}); "
                              f"expected <= seq_len, or set task.eval_context")

    @property
    def segment(self) -> int:
        return self.settings.eval_segment or self.settings.seq_len

    @property
    def stride(self) -> int:
        return self.settings.eval_stride or max(1, self.settings.seq_len // 4)

    def context(self, carry: bool) -> int:
        s = self.settings
        if s.eval_context is not None:
            return s.eval_context
        return s.seq_len if carry else s.seq_len + 1 - self.stride

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES  # the data; the model defaults to the tokenizer's 259 (bytes + <pad> <bos> <eos>)

    @property
    def max_length(self) -> int:
        s = self.settings
        if s.eval_mode == "carry":
            return s.seq_len
        return max(s.seq_len, self.context(False) + self.stride - 1)  # the longest sliding window

    def tokenizer(self):
        return ByteTokenizer()

    def model_config_defaults(self) -> dict:
        out = super().model_config_defaults()
        out["vocab_size"] = VOCAB_SIZE  # so generate() and the saved tokenizer's special ids fit
        out.update(pad_token_id=SPECIAL_IDS["<pad>"], bos_token_id=SPECIAL_IDS["<bos>"],
                   eos_token_id=SPECIAL_IDS["<eos>"])
        return out

    def check_model_config(self, config, where: str = "model") -> None:
        """Besides the base checks: refuse a model that is not causal; decide ``eval_mode: auto`` from the layers
        (every layer with a fixed-size state: carry; else window) and refuse ``carry`` for a model that has a
        growing KV cache."""
        super().check_model_config(config, where)
        if getattr(config, "bidirectional", False):
            raise ConfigError(f"{where}.bidirectional: a language model must be causal (it would see the bytes it "
                              f"predicts), got bidirectional=True; expected False")
        for i, spec in enumerate(config.layer_specs()):
            if getattr(spec.mixer, "causal", True) is False:
                raise ConfigError(f"{where}.causal: a language model must be causal (it would see the bytes it "
                                  f"predicts), but layer {i}'s {spec.mixer_type} mixer has causal=False")
        recurrent = carries_state(config)
        mode = self.settings.eval_mode
        if mode == "carry" and not recurrent:
            raise ConfigError(f"task.eval_mode: 'carry' needs a model whose every layer keeps a fixed-size state; "
                              f"this {config.model_type} model has layers whose cache grows with the text "
                              f"(attention); use 'window' or 'auto'")
        if mode == "auto":
            self._carry = recurrent

    @property
    def eval_mode(self) -> str:
        """The mode evaluation uses: ``carry`` / ``window``, or ``window`` while ``auto`` is undecided (no model
        config checked yet: windows are exact for every causal model)."""
        return "carry" if self._carry else "window"

    # ---- data --------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def open_corpus(self) -> ByteCorpus:
        """The corpus and its split (read lazily, once per task instance, by :attr:`corpus`)."""

    @property
    def corpus(self) -> ByteCorpus:
        if self._corpus is None:
            c = self.open_corpus()
            lo, hi = c.split_range("train")
            if hi - lo < self.settings.seq_len + 1:
                raise ConfigError(f"task.seq_len: the train split of {c.source} has {hi - lo} bytes, fewer than "
                                  f"one window of seq_len + 1 = {self.settings.seq_len + 1}")
            self._corpus = c
        return self._corpus

    def split_size(self, split: str) -> int:
        """train: the number of training windows; valid / test: the number of bytes scored. Opening the corpus
        here means a missing or corrupt file stops the trainer before it writes anything."""
        lo, hi = self.corpus.split_range(split)
        if split == "train":
            return (hi - lo - 1) // self.settings.seq_len
        return hi - max(lo, 1)

    def generate(self, split: str):
        """train: :class:`TrainWindows`; valid / test: the split's byte range (scored by :meth:`eval_loader`)."""
        c = self.corpus
        lo, hi = c.split_range(split)
        if split == "train":
            return TrainWindows(c.data, lo, hi, self.settings.seq_len, self.settings.seed)
        return ByteRange(c.data, lo, hi, split)

    def dataset(self, split: str):
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split: expected one of train, valid, test, got {split!r}")
        return self.generate(split)  # the memmap is the cache: nothing to save through datasets

    def eval_loader(self, dataset, batch_size: int, rank: int = 0, world: int = 1):
        if not isinstance(dataset, ByteRange):
            raise TypeError(f"dataset: expected a valid/test split of this task (ByteRange), got "
                            f"{type(dataset).__name__}")
        if self.eval_mode == "carry":
            return CarryBatches(dataset.data, dataset.lo, dataset.hi, segment=self.segment,
                                context=self.context(True), streams_per_rank=batch_size, rank=rank, world=world)
        return WindowBatches(dataset.data, dataset.lo, dataset.hi, stride=self.stride, context=self.context(False),
                             batch_size=batch_size, rank=rank, world=world)

    # ---- metrics ---------------------------------------------------------------------------------------------

    def metric_sums(self, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return bpb_sums(logits, batch["targets"])

    @staticmethod
    def finalize(total: dict[str, torch.Tensor]) -> dict:
        return finalize_bpb(total)


@dataclass
class ByteRange:
    """A valid / test split: bytes ``[lo, hi)`` of the corpus; ``len`` is the number of bytes scored."""

    data: object
    lo: int
    hi: int
    split: str

    def __len__(self) -> int:
        return self.hi - max(self.lo, 1)


class Enwik8Task(_ByteLMTask):
    """enwik8 (the first 10^8 bytes of a 2006 Wikipedia dump): 90M train, 5M valid, 5M test bytes."""

    name = "enwik8"
    Settings = Enwik8Settings

    def open_corpus(self) -> ByteCorpus:
        return open_enwik8(self.settings.path, self.cache_dir)


class BytesLMTask(_ByteLMTask):
    """Any corpus: a file or a folder of files, split by fraction in file order."""

    name = "bytes_lm"
    Settings = BytesLMSettings

    @classmethod
    def validate_settings(cls, s) -> None:
        super().validate_settings(s)
        from .corpus import fraction_split

        fraction_split(1_000_000, s.valid_fraction, s.test_fraction)  # the fractions' own checks

    def open_corpus(self) -> ByteCorpus:
        s = self.settings
        return open_byte_corpus(s.path, self.cache_dir, pattern=s.pattern, separator=s.separator,
                                valid_fraction=s.valid_fraction, test_fraction=s.test_fraction)
