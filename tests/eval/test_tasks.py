"""The Task interface beyond MQAR: a classification task (padding, head, metrics) through the trainer and the
eval CLI, and the registry's checks."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from seqzoo.config import ConfigError, resolve
from seqzoo.eval import IGNORE_INDEX, Task, get_task, register_task
from seqzoo.eval.evaluate import eval_loader, evaluate


@dataclass
class FirstTokenSettings:
    num_classes: int = 3
    max_len: int = 12
    num_train: int = 96
    num_valid: int = 16
    num_test: int = 32
    seed: int = 0


class FirstTokenTask(Task):
    """Variable-length sequences whose label is their first token: exercises padding and the classifier."""

    name = "test-first-token"
    head = "classification"
    Settings = FirstTokenSettings
    pad_token_id = 0

    @classmethod
    def validate_settings(cls, s):
        if s.max_len < 2:
            raise ConfigError(f"task.max_len: expected >= 2, got {s.max_len}")

    @property
    def num_labels(self):
        return self.settings.num_classes

    @property
    def vocab_size(self):
        return 16

    @property
    def max_length(self):
        return self.settings.max_len

    def model_config_defaults(self):
        return {**super().model_config_defaults(), "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None}

    def generate(self, split):
        s = self.settings
        rng = np.random.RandomState(s.seed * 3 + ["train", "valid", "test"].index(split))
        n = getattr(s, f"num_{split}")
        ids, labels = [], []
        for _ in range(n):
            length = rng.randint(2, s.max_len + 1)
            label = rng.randint(s.num_classes)
            ids.append([1 + label] + rng.randint(1, 16, size=length - 1).tolist())
            labels.append(label)
        return {"input_ids": ids, "labels": labels}


register_task(FirstTokenTask)


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "default_cache"))


def test_registry_checks():
    register_task(FirstTokenTask)  # registering the same class again is a no-op

    class Other(FirstTokenTask):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_task(Other)
    with pytest.raises(TypeError, match="Task subclass"):
        register_task(dict)


def test_classification_collate_pads_and_masks(tmp_path):
    task = get_task("test-first-token", cache_dir=tmp_path)
    ds = task.dataset("train")
    batch = task.collate([ds[i] for i in range(8)])
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == (8, int(lengths.max()))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["labels"].shape == (8,) and torch.equal(batch["labels"], batch["input_ids"][:, 0] - 1)


def test_classification_metrics_and_padded_shards(tmp_path):
    task = get_task("test-first-token", {"num_test": 7}, cache_dir=tmp_path)
    ds = task.dataset("test")
    logits = torch.full((7, 3), -5.0)
    labels = torch.tensor([int(ds[i]["labels"]) for i in range(7)])
    logits[torch.arange(7), labels] = 5.0
    logits[0] = -logits[0]  # one wrong
    m = task.finalize(task.metric_sums(logits, {"labels": labels}))
    assert m["accuracy"] == pytest.approx(6 / 7) and m["num_targets"] == 7
    # 7 examples over 3 "processes": 3 + 2 + 2, padded to 3 each with label-less copies; nothing counted twice
    shards = [eval_loader(task, ds, 2, rank, 3) for rank in range(3)]
    assert [len(s.dataset) for s in shards] == [3, 3, 3]
    seen = [int(b["labels"][j]) for s in shards for b in s for j in range(len(b["labels"]))]
    assert sorted(x for x in seen if x != IGNORE_INDEX) == sorted(labels.tolist())
    assert seen.count(IGNORE_INDEX) == 2


def test_classification_task_trains_and_evaluates(tmp_path, capsys):
    import transformers

    from seqzoo.eval.__main__ import main as eval_main
    from seqzoo.trainer import train

    cfg = resolve({
        "output_dir": str(tmp_path / "run"),
        "model": {"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2},
        "task": {"name": "test-first-token"},
        "train": {"max_steps": 16, "batch_size": 16, "lr": 1.0e-2, "log_every": 4, "report_to": ["none"],
                  "progress_bar": False, "data_cache_dir": str(tmp_path / "cache")},
        "eval": {"batch_size": 8},
    })
    result = train(cfg)
    assert result["metrics"]["num_targets"] == 32
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in recs if r["type"] == "train"]
    assert train_losses[-1] < train_losses[0]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    assert model.config.num_labels == 3
    capsys.readouterr()
    assert eval_main(["--model", str(tmp_path / "run"), "--output", "-",
                      "--cache-dir", str(tmp_path / "cache")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
