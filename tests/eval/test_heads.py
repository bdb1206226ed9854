"""Heads and Task.step: the registry's checks, the built-in heads against a direct model call, the carry that
evaluate() hands from batch to batch, and a dual-encoder pair-classifier head (the shape of LRA retrieval)
registered from outside seqzoo that trains through the trainer and evaluates through the eval CLI."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import transformers

import seqzoo  # noqa: F401  (registers the architectures)
from seqzoo.common import ConfigError
from seqzoo.eval import (IGNORE_INDEX, Head, HeadOutput, MQARTask, Task, get_head, get_task, list_heads,
                         register_head, register_task)
from seqzoo.eval.evaluate import evaluate
from seqzoo.eval.heads import CausalLMHead


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "default_cache"))


def tiny_lm(vocab=64, **kw):
    torch.manual_seed(0)
    config = seqzoo.make_config("transformer", hidden_size=32, num_hidden_layers=1, num_heads=2, vocab_size=vocab,
                                max_position_embeddings=32, pad_token_id=None, bos_token_id=None,
                                eos_token_id=None, **kw)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


# ---- the registry ------------------------------------------------------------------------------------------


def test_builtin_heads_and_registry_errors():
    assert {"causal-lm", "classification"} <= set(list_heads())
    with pytest.raises(ConfigError, match=r"task 'x': head: unknown head 'causal_lm' \(did you mean 'causal-lm'\?\)"):
        get_head("causal_lm", where="task 'x': head")
    with pytest.raises(TypeError, match="Head subclass or instance"):
        register_head(dict)

    class NoForward(Head):  # abstract: collate and forward are missing
        name = "test-no-forward"

    with pytest.raises(TypeError, match="abstract"):
        register_head(NoForward)

    class OtherCausal(CausalLMHead):
        pass

    with pytest.raises(ValueError, match="'causal-lm' is already registered"):
        register_head(OtherCausal)
    register_head(CausalLMHead)  # the same class again is a no-op


def test_register_task_needs_a_registered_head():
    @dataclass
    class S:
        n: int = 1

    class Orphan(Task):
        name = "test-orphan"
        head = "no-such-head"
        Settings = S

        def generate(self, split):
            return {"input_ids": [[1]], "labels": [[1]]}

    with pytest.raises(ConfigError, match=r"register_task: Orphan.head: unknown head 'no-such-head'; valid: "):
        register_task(Orphan)


# ---- Task.step with the built-in heads ---------------------------------------------------------------------


def test_causal_lm_step_is_the_model_call():
    task = get_task("mqar", {"vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2, "num_test": 6})
    batch = task.collate([task.dataset("test")[i] for i in range(6)])
    model = tiny_lm()
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    out = task.step(model, batch)
    assert out.loss is not None and out.loss.requires_grad
    torch.testing.assert_close(out.loss, ref.loss)
    # the metric sums are the task's metrics of the model's logits; loss only / metrics only leave the other out
    expect = task.metric_sums(ref.logits, batch)
    assert out.sums.keys() == expect.keys() == {"loss", "accuracy"}
    for k in expect:
        torch.testing.assert_close(out.sums[k], expect[k])
    # the summed loss over the 12 targets equals the model's mean loss times the count
    torch.testing.assert_close(out.sums["loss"][0] / out.sums["loss"][1], ref.loss.double(), rtol=1e-5, atol=1e-6)
    assert out.sums["loss"][1] == 6 * 2
    assert task.step(model, batch, metrics=False).sums is None
    assert task.step(model, batch, loss=False).loss is None


def test_causal_lm_targets_shift_by_one():
    head = get_head("causal-lm")
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3], labels[1, 1] = 4, 6
    scored_logits, scored = head.targets(logits, labels)
    assert scored.tolist() == [4, 6]
    torch.testing.assert_close(scored_logits, torch.stack([logits[0, 2], logits[1, 0]]))


# ---- carry -------------------------------------------------------------------------------------------------


class CountingHead(CausalLMHead):
    """A causal-LM head that carries a segment counter from batch to batch and records what it was handed."""

    name = "test-counting"
    seen: list = []

    def forward(self, model, batch, *, loss, carry=None):
        type(self).seen.append(carry)
        out = super().forward(model, batch, loss=loss)
        return HeadOutput(loss=out.loss, logits=out.logits, carry=(carry or 0) + 1)


register_head(CountingHead)


@register_task
class CountingMQAR(MQARTask):
    name = "test-counting-mqar"
    head = "test-counting"


def test_evaluate_hands_each_batch_the_previous_carry():
    task = CountingMQAR({"vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2, "num_test": 10})
    CountingHead.seen = []
    metrics = evaluate(tiny_lm(), task, task.eval_loader(task.dataset("test"), 4))
    assert CountingHead.seen == [None, 1, 2]  # three batches (4 + 4 + 2), each handed the previous carry
    assert metrics["num_targets"] == 20


# ---- a dual-encoder pair classifier, registered from outside seqzoo ----------------------------------------


class PairClassifier(torch.nn.Module):
    """Encodes two documents with one backbone (any architecture's AutoModel), mean-pools each over its real
    tokens and classifies [a, b, a * b, |a - b|]."""

    def __init__(self, backbone, num_labels: int):
        super().__init__()
        self.backbone = backbone
        self.score = torch.nn.Linear(4 * backbone.config.hidden_size, num_labels)

    def encode(self, ids, mask):
        h = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # [B, T, H]
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)  # [B, H]

    def forward(self, input_ids, attention_mask, input_ids_2, attention_mask_2):
        a, b = self.encode(input_ids, attention_mask), self.encode(input_ids_2, attention_mask_2)
        return self.score(torch.cat([a, b, a * b, (a - b).abs()], dim=-1))  # [B, num_labels]


class PairHead(Head):
    name = "test-pair-classification"
    auto_class = "AutoModel"

    def build(self, config, task):
        return PairClassifier(transformers.AutoModel.from_config(config), task.num_labels)

    def load(self, path, task, **overrides):
        from safetensors.torch import load_file

        model = PairClassifier(transformers.AutoModel.from_pretrained(path, **overrides), task.num_labels)
        model.score.load_state_dict(load_file(f"{path}/pair_score.safetensors"))
        return model

    def save(self, model, directory, state_dict=None):
        from safetensors.torch import save_file

        state = state_dict if state_dict is not None else model.state_dict()
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        model.backbone.save_pretrained(directory, state_dict=backbone)
        save_file({k[len("score."):]: v.contiguous() for k, v in state.items() if k.startswith("score.")},
                  f"{directory}/pair_score.safetensors")

    def collate(self, task, examples):
        from seqzoo.eval.heads import _pad

        ids, mask = _pad([torch.as_tensor(e["input_ids"]) for e in examples], task.pad_token_id)
        ids2, mask2 = _pad([torch.as_tensor(e["input_ids_2"]) for e in examples], task.pad_token_id)
        labels = torch.tensor([int(e["labels"]) for e in examples])
        return {"input_ids": ids, "attention_mask": mask, "input_ids_2": ids2, "attention_mask_2": mask2,
                "labels": labels}

    def forward(self, model, batch, *, loss, carry=None):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["input_ids_2"], batch["attention_mask_2"])
        value = torch.nn.functional.cross_entropy(logits.float(), batch["labels"]) if loss else None
        return HeadOutput(loss=value, logits=logits)

    def num_tokens(self, batch):
        return int(batch["attention_mask"].sum() + batch["attention_mask_2"].sum())


register_head(PairHead)


@dataclass
class SameStartSettings:
    max_len: int = 10
    num_train: int = 128
    num_valid: int = 16
    num_test: int = 48
    seed: int = 0


@register_task
class SameStartTask(Task):
    """Two documents of different lengths; label 1 when they start with the same token."""

    name = "test-same-start"
    head = "test-pair-classification"
    Settings = SameStartSettings
    pad_token_id = 0

    @property
    def num_labels(self):
        return 2

    @property
    def vocab_size(self):
        return 8

    @property
    def max_length(self):
        return self.settings.max_len

    def model_config_defaults(self):
        return {**super().model_config_defaults(), "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None}

    def generate(self, split):
        s = self.settings
        rng = np.random.RandomState(s.seed * 3 + ["train", "valid", "test"].index(split))
        rows = {"input_ids": [], "input_ids_2": [], "labels": []}
        for _ in range(getattr(s, f"num_{split}")):
            a = rng.randint(1, 8, size=rng.randint(2, s.max_len + 1)).tolist()
            b = rng.randint(1, 8, size=rng.randint(2, s.max_len + 1)).tolist()
            if rng.rand() < 0.5:
                b[0] = a[0]
            rows["input_ids"].append(a)
            rows["input_ids_2"].append(b)
            rows["labels"].append(int(a[0] == b[0]))
        return rows


def test_pair_head_trains_saves_and_evaluates(tmp_path, capsys):
    from seqzoo.config import resolve
    from seqzoo.eval.__main__ import main as eval_main
    from seqzoo.trainer import train

    cfg = resolve({
        "output_dir": str(tmp_path / "run"),
        "model": {"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2},
        "task": {"name": "test-same-start"},
        "train": {"max_steps": 24, "batch_size": 16, "lr": 1.0e-2, "log_every": 8, "report_to": ["none"],
                  "progress_bar": False, "data_cache_dir": str(tmp_path / "cache")},
        "eval": {"batch_size": 8},
    })
    result = train(cfg)
    assert result["metrics"]["num_targets"] == 48
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["type"] == "train"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    final = tmp_path / "run" / "final"
    assert (final / "pair_score.safetensors").is_file() and (final / "config.json").is_file()
    # the eval CLI loads the pair model through the head and reproduces the trainer's test metrics
    capsys.readouterr()
    assert eval_main(["--model", str(tmp_path / "run"), "--output", "-", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"]["name"] == "test-same-start"
    assert out["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert out["metrics"]["loss"] == pytest.approx(result["metrics"]["loss"], rel=1e-5)
