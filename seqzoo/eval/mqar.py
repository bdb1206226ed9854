"""MQAR, multi-query associative recall (Arora, Eyuboglu et al., "Zoology", arXiv 2312.04927).

A faithful, seeded reimplementation of Zoology's generator (``zoology/data/multiquery_ar.py``). One example of
length ``seq_len`` (``L``) with ``K = num_kv_pairs`` pairs over a vocabulary of ``V = vocab_size`` ids::

    k1 v1 k2 v2 ... kK vK  | x  x  k2 x  x  x  k1 x  ...      (x: random filler)
    context (2K tokens)    | queries at gap positions, the rest filler

- keys are drawn without replacement from ``[1, V/2)``, values without replacement from ``[V/2, V)``;
- the ``K`` queries repeat the keys (in the same order as the context) at even offsets ``2 * gap`` of the
  query region, the gaps drawn without replacement from ``0 .. (L - 2K)/2 - 1`` with probability
  ``∝ a * i^(a-1)`` for ``i = 1, 2, ...`` (``a = power_a``; ``a = 1`` is uniform, small ``a`` puts the
  queries near the context);
- every other position is filler drawn uniformly from ``[0, V)`` (``random_non_queries``; else 0).

Random numbers come from exactly the calls Zoology makes, in the same order, on a NumPy ``RandomState``
seeded with the split's seed (Zoology seeds NumPy's global state the same way): so the keys, values and query
positions equal Zoology's for that seed. Zoology draws the filler from torch's *global* generator, which it
does not seed in the generator; here it comes from a ``torch.Generator`` seeded with the same seed, so the
same seed gives the same data, filler included.

**Labels (our convention).** Zoology returns ``inputs = seq[:-1]`` and ``targets = seq[1:]`` already shifted:
its target at the position of a query key is that key's value. Our models use the Hugging Face causal-LM
loss, which shifts internally (logits at ``t`` are scored against ``labels[t + 1]``), so here ``labels`` is
*unshifted*: ``labels[p + 1] = value`` where ``input_ids[p]`` is a query key, ``-100`` everywhere else. The
model is asked for the value at the position right after the query key, exactly as in Zoology; the last query
key sits at most at ``L - 2``, so ``p + 1 <= L - 1`` always fits. The metric is accuracy over these ``K``
query targets per example (``Task.metric_sums``: ``argmax logits[:, :-1] == labels[:, 1:]``).

Splits: train / valid / test are generated with seeds derived from ``seed`` and the split name (distinct
streams), with ``num_train`` / ``num_valid`` / ``num_test`` examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..common import ConfigError
from .base import IGNORE_INDEX, Task

SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}


def check_mqar_args(vocab_size: int, seq_len: int, num_kv_pairs: int, power_a: float = 0.01,
                    num_passes: int = 1, num_examples: int = 1, prefix: str = "") -> None:
    """Zoology's constraints, as errors that name the argument."""
    def name(n):
        return f"{prefix}{n}"

    for n, v in (("vocab_size", vocab_size), ("seq_len", seq_len), ("num_kv_pairs", num_kv_pairs),
                 ("num_passes", num_passes), ("num_examples", num_examples)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name(n)}: expected a positive integer, got {v!r}")
    if seq_len % 2:
        raise ConfigError(f"{name('seq_len')}: expected an even length (keys and values come in pairs), "
                          f"got {seq_len}")
    if vocab_size <= seq_len:
        raise ConfigError(f"{name('vocab_size')}: too small: expected vocab_size > seq_len ({seq_len}), "
                          f"got {vocab_size}")
    need = num_kv_pairs * 2 * num_passes + num_kv_pairs * 2
    if need > seq_len:
        raise ConfigError(f"{name('num_kv_pairs')}: too many pairs: {num_kv_pairs} pairs x {num_passes} pass(es) "
                          f"need seq_len >= 2*K*num_passes + 2*K = {need}, got seq_len {seq_len}; "
                          f"expected num_kv_pairs <= {seq_len // (2 * num_passes + 2)}")
    if not power_a > 0:
        raise ConfigError(f"{name('power_a')}: expected a positive number (1.0 = uniform gaps), got {power_a!r}")


def multiquery_ar(vocab_size: int, seq_len: int, num_kv_pairs: int, num_examples: int, seed: int,
                  power_a: float = 0.01, num_passes: int = 1,
                  random_non_queries: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Generate MQAR examples. Returns ``(input_ids, labels)``, both int64 ``[num_examples, seq_len]``, labels
    in the unshifted HF convention (see the module docstring). ``num_passes > 1`` repeats the key-value context
    (the JRT variant Zoology supports)."""
    check_mqar_args(vocab_size, seq_len, num_kv_pairs, power_a, num_passes, num_examples)
    rng = np.random.RandomState(seed)
    context_size = num_kv_pairs * 2 * num_passes

    # keys from [1, V/2), values from [V/2, V), without replacement within an example; one row at a time in
    # the order Zoology's np.apply_along_axis(np.random.choice, ...) draws them
    key_vocab_size = vocab_size // 2
    key_choices = np.arange(1, key_vocab_size)
    value_choices = np.arange(key_vocab_size, vocab_size)
    keys = np.stack([rng.choice(key_choices, replace=False, size=num_kv_pairs) for _ in range(num_examples)])
    values = np.stack([rng.choice(value_choices, replace=False, size=num_kv_pairs) for _ in range(num_examples)])

    kvs = np.zeros((num_examples, num_kv_pairs * 2), dtype=np.int64)
    kvs[:, 0::2] = keys
    kvs[:, 1::2] = values
    kvs = np.tile(kvs, (1, num_passes))  # [N, context_size]

    # query gaps: power law over the (L - context) / 2 even slots of the query region
    space = (seq_len - context_size) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    slots = np.arange(space, dtype=int)
    gaps = np.stack([rng.choice(slots, replace=False, p=p, size=num_kv_pairs) for _ in range(num_examples)])

    # the full sequence has L + 1 tokens; inputs are its first L
    queries = np.zeros((num_examples, seq_len - context_size + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, values=keys, axis=1)
    examples = np.concatenate([kvs, queries], axis=1)  # [N, L + 1]
    inputs = examples[:, :-1]  # [N, L]

    # labels: the value one position after its query key (unshifted; the HF loss does the shift)
    labels = np.full((num_examples, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context_size + 1, values=values, axis=1)
    labels = labels[:, :-1]  # [N, L]; the last slot is never a target (gaps * 2 + context <= L - 2)

    if random_non_queries:
        gen = torch.Generator().manual_seed(int(seed))
        filler = torch.randint(vocab_size, size=inputs.shape, generator=gen).numpy()
        inputs = np.where(inputs == 0, filler, inputs)
    return np.ascontiguousarray(inputs, dtype=np.int64), np.ascontiguousarray(labels, dtype=np.int64)


def split_seed(seed: int, split: str) -> int:
    """A distinct, reproducible 32-bit seed per (seed, split)."""
    return int(np.random.SeedSequence([int(seed), SPLIT_INDEX[split]]).generate_state(1)[0])


@dataclass
class MQARSettings:
    vocab_size: int = 8192  # Zoology's default; the model's vocab_size must be at least this
    seq_len: int = 64  # L, even
    num_kv_pairs: int = 4  # K, with 4K <= L
    power_a: float = 0.01  # power-law parameter of the query gaps (1.0 = uniform)
    num_passes: int = 1  # >1: the context repeats (JRT); needs 2K*passes + 2K <= L
    random_non_queries: bool = True  # filler from [0, V) instead of 0
    num_train: int = 100_000
    num_valid: int = 1_000
    num_test: int = 3_000
    seed: int = 0


class MQARTask(Task):
    name = "mqar"
    head = "causal-lm"
    Settings = MQARSettings
    data_version = 1

    @classmethod
    def validate_settings(cls, s: MQARSettings) -> None:
        check_mqar_args(s.vocab_size, s.seq_len, s.num_kv_pairs, s.power_a, s.num_passes, prefix="task.")
        for n in ("num_train", "num_valid", "num_test"):
            v = getattr(s, n)
            if v < 1:
                raise ConfigError(f"task.{n}: expected a positive number of examples, got {v}")

    @property
    def vocab_size(self) -> int:
        return self.settings.vocab_size

    @property
    def max_length(self) -> int:
        return self.settings.seq_len

    def model_config_defaults(self) -> dict:
        out = super().model_config_defaults()
        # MQAR has no special tokens: every id in [0, V) is data (0 is also filler)
        out.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)
        return out

    def num_examples(self, split: str) -> int:
        return getattr(self.settings, f"num_{split}")

    def split_size(self, split: str) -> int:
        return self.num_examples(split)

    def split_params(self, split: str) -> dict:
        s = self.settings
        return {"vocab_size": s.vocab_size, "seq_len": s.seq_len, "num_kv_pairs": s.num_kv_pairs,
                "power_a": s.power_a, "num_passes": s.num_passes, "random_non_queries": s.random_non_queries,
                "num_examples": self.num_examples(split), "seed": split_seed(s.seed, split)}

    def generate(self, split: str):
        import datasets

        p = self.split_params(split)
        inputs, labels = multiquery_ar(
            vocab_size=p["vocab_size"], seq_len=p["seq_len"], num_kv_pairs=p["num_kv_pairs"],
            num_examples=p["num_examples"], seed=p["seed"], power_a=p["power_a"], num_passes=p["num_passes"],
            random_non_queries=p["random_non_queries"])
        features = datasets.Features({
            "input_ids": datasets.Sequence(datasets.Value("int32"), length=inputs.shape[1]),
            "labels": datasets.Sequence(datasets.Value("int32"), length=labels.shape[1]),
        })
        return datasets.Dataset.from_dict({"input_ids": inputs.astype(np.int32), "labels": labels.astype(np.int32)},
                                          features=features)

    def collate(self, examples: list[dict]) -> dict:
        # fixed length: stack, no padding needed
        ids = torch.stack([torch.as_tensor(e["input_ids"]) for e in examples]).long()
        labels = torch.stack([torch.as_tensor(e["labels"]) for e in examples]).long()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
