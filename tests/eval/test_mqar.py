"""MQAR generator: ranges, query placement, labels (HF shift convention), determinism, constraints, caching."""

import numpy as np
import pytest
import torch

from seqzoo.config import ConfigError
from seqzoo.eval import IGNORE_INDEX, get_task, list_tasks, multiquery_ar
from seqzoo.eval.mqar import split_seed

V, L, K, N = 200, 64, 6, 300


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "default_cache"))


@pytest.fixture(scope="module")
def data():
    return multiquery_ar(vocab_size=V, seq_len=L, num_kv_pairs=K, num_examples=N, seed=123)


def test_shapes_and_dtypes(data):
    inputs, labels = data
    assert inputs.shape == labels.shape == (N, L)
    assert inputs.dtype == labels.dtype == np.int64
    assert inputs.min() >= 0 and inputs.max() < V


def test_context_keys_and_values(data):
    inputs, _ = data
    keys, values = inputs[:, 0:2 * K:2], inputs[:, 1:2 * K:2]
    assert keys.min() >= 1 and keys.max() < V // 2  # keys from [1, V/2)
    assert values.min() >= V // 2 and values.max() < V  # values from [V/2, V)
    for row in range(N):  # distinct within an example (drawn without replacement)
        assert len(set(keys[row])) == K and len(set(values[row])) == K


def test_labels_follow_the_query_keys(data):
    """labels[p + 1] = value of the key at input p, for each of the K queries; -100 elsewhere."""
    inputs, labels = data
    for row in range(N):
        kv = dict(zip(inputs[row, 0:2 * K:2].tolist(), inputs[row, 1:2 * K:2].tolist()))
        targets = np.flatnonzero(labels[row] != IGNORE_INDEX)
        assert len(targets) == K
        assert targets.min() >= 2 * K + 1  # all in the query region, after the context
        query_pos = targets - 1
        assert np.all(query_pos % 2 == 0)  # queries sit at even offsets of the query region (context is 2K)
        assert sorted(inputs[row, query_pos].tolist()) == sorted(kv)  # each key queried exactly once
        for p in query_pos:
            assert labels[row, p + 1] == kv[inputs[row, p]]


def test_label_alignment_with_causal_lm_shift(data):
    """A perfect model (predict at t the label at t+1) scores accuracy 1 under Task.metric_sums; a model shifted
    by one position does not: the convention and the metric agree."""
    inputs, labels = data
    task = get_task("mqar", dict(vocab_size=V, seq_len=L, num_kv_pairs=K))
    lab = torch.as_tensor(labels[:8])
    logits = torch.zeros(8, L, V)
    nxt = lab[:, 1:].clamp(min=0)
    logits[:, :-1].scatter_(2, nxt.unsqueeze(-1), 10.0)  # logits at t predict labels[t + 1]
    batch = {"input_ids": torch.as_tensor(inputs[:8]), "labels": lab}
    m = task.finalize(task.metric_sums(logits, batch))
    assert m["accuracy"] == 1.0 and m["num_targets"] == 8 * K
    wrong = torch.zeros(8, L, V)
    wrong.scatter_(2, lab.clamp(min=0).unsqueeze(-1), 10.0)  # unshifted: predicts labels[t] at t
    assert task.finalize(task.metric_sums(wrong, batch))["accuracy"] == 0.0


def test_queries_biased_towards_the_context():
    """power_a = 0.01 puts most queries right after the context; power_a = 1 spreads them uniformly."""
    def mean_gap(a):
        _, labels = multiquery_ar(vocab_size=512, seq_len=256, num_kv_pairs=4, num_examples=200, seed=0, power_a=a)
        pos = np.argwhere(labels != IGNORE_INDEX)[:, 1]
        return float(np.mean(pos))

    assert mean_gap(0.01) < mean_gap(1.0) - 20


def test_filler_and_no_filler():
    inputs, labels = multiquery_ar(vocab_size=V, seq_len=L, num_kv_pairs=K, num_examples=50, seed=1,
                                   random_non_queries=False)
    is_query = np.zeros_like(inputs, dtype=bool)
    is_query[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    assert np.all(inputs[:, 2 * K:][~is_query[:, 2 * K:]] == 0)  # zeros where Zoology leaves filler off
    filled, _ = multiquery_ar(vocab_size=V, seq_len=L, num_kv_pairs=K, num_examples=50, seed=1)
    assert (filled[:, 2 * K:] != 0).mean() > 0.9


def test_same_seed_same_data_including_filler(data):
    again = multiquery_ar(vocab_size=V, seq_len=L, num_kv_pairs=K, num_examples=N, seed=123)
    assert np.array_equal(data[0], again[0]) and np.array_equal(data[1], again[1])
    other = multiquery_ar(vocab_size=V, seq_len=L, num_kv_pairs=K, num_examples=N, seed=124)
    assert not np.array_equal(data[0], other[0])
    # the generator does not depend on (or disturb) the global RNGs
    torch.manual_seed(999)
    np.random.seed(999)
    third = multiquery_ar(vocab_size=V, seq_len=L, num_kv_pairs=K, num_examples=N, seed=123)
    assert np.array_equal(data[0], third[0])


def test_num_passes_repeats_the_context():
    inputs, labels = multiquery_ar(vocab_size=V, seq_len=L, num_kv_pairs=4, num_examples=20, seed=0, num_passes=2)
    assert np.array_equal(inputs[:, :8], inputs[:, 8:16])
    assert ((labels != IGNORE_INDEX).sum(1) == 4).all()


@pytest.mark.parametrize("kwargs, key, words", [
    (dict(seq_len=63), "seq_len", "even"),
    (dict(vocab_size=64), "vocab_size", "too small"),
    (dict(num_kv_pairs=17), "num_kv_pairs", "too many"),
    (dict(num_kv_pairs=0), "num_kv_pairs", "positive"),
    (dict(power_a=0.0), "power_a", "positive"),
    (dict(num_passes=2, num_kv_pairs=11), "num_kv_pairs", "too many"),
])
def test_constraint_errors(kwargs, key, words):
    args = dict(vocab_size=128, seq_len=64, num_kv_pairs=4, num_examples=4, seed=0)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=key) as e:
        multiquery_ar(**args)
    assert words in str(e.value) and str(args[key]) in str(e.value)
    with pytest.raises(ConfigError, match=f"task.{key}"):  # the same checks on the task's settings
        get_task("mqar", {k: v for k, v in args.items() if k != "num_examples"})


def test_task_registry_and_splits(tmp_path):
    assert "mqar" in list_tasks()
    with pytest.raises(ConfigError, match="unknown task 'nope'.*mqar"):
        get_task("nope")
    with pytest.raises(ConfigError, match="unknown key 'task.seqlen'.*did you mean 'seq_len'"):
        get_task("mqar", {"seqlen": 64})
    settings = dict(vocab_size=128, seq_len=32, num_kv_pairs=4, num_train=40, num_valid=8, num_test=16, seed=5)
    task = get_task("mqar", settings, cache_dir=tmp_path)
    assert task.head == "causal-lm" and task.model_config_defaults()["vocab_size"] == 128
    train, valid, test = (task.dataset(s) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (40, 8, 16)
    # splits come from distinct seeds
    assert len({split_seed(5, s) for s in ("train", "valid", "test")}) == 3
    assert not torch.equal(train[:8]["input_ids"], valid[:8]["input_ids"])
    # the cached split equals the generator's output for the split's seed
    inputs, labels = multiquery_ar(128, 32, 4, 16, split_seed(5, "test"))
    assert torch.equal(test[:]["input_ids"].long(), torch.as_tensor(inputs))
    assert torch.equal(test[:]["labels"].long(), torch.as_tensor(labels))
    batch = task.collate([test[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, 32) and batch["labels"].dtype == torch.long
    assert batch["attention_mask"].all()


def test_cache_reused_and_keyed_by_settings(tmp_path, monkeypatch):
    settings = dict(vocab_size=128, seq_len=32, num_kv_pairs=4, num_train=40, num_valid=8, num_test=16)
    task = get_task("mqar", settings, cache_dir=tmp_path)
    first = task.dataset("test")[:]["input_ids"]
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 1 and not any(p.name.startswith(".") for p in tmp_path.iterdir())

    def boom(*a, **k):
        raise AssertionError("regenerated a cached split")

    monkeypatch.setattr(type(task), "generate", boom)
    again = get_task("mqar", settings, cache_dir=tmp_path).dataset("test")[:]["input_ids"]
    assert torch.equal(first, again)
    monkeypatch.undo()
    # a different setting of the split gets its own entry; a setting of another split does not matter
    get_task("mqar", {**settings, "num_test": 20}, cache_dir=tmp_path).dataset("test")
    assert len(list(tmp_path.iterdir())) == 2
    monkeypatch.setattr(type(task), "generate", boom)
    get_task("mqar", {**settings, "num_train": 99}, cache_dir=tmp_path).dataset("test")


# Output of Zoology's own generator (HazyResearch/zoology, zoology/data/multiquery_ar.py at commit d88d6f5) for
# vocab_size=64, input_seq_len=16, num_kv_pairs=2, power_a=0.01, num_examples=3, seed=7, with torch's global
# generator also seeded with 7 (Zoology draws the filler from it). Its labels are pre-shifted (target at the
# query key's own position); ours are the same targets one position later (the HF loss shifts them back).
ZOOLOGY_INPUTS = [[3, 53, 19, 32, 3, 19, 23, 39, 19, 57, 14, 23, 8, 25, 46, 42],
                  [31, 43, 18, 56, 18, 48, 31, 7, 44, 0, 11, 55, 58, 6, 19, 60],
                  [19, 49, 23, 48, 23, 55, 19, 48, 59, 61, 0, 34, 56, 9, 14, 38]]
ZOOLOGY_TARGETS = {0: {4: 53, 8: 32}, 1: {4: 56, 6: 43}, 2: {4: 48, 6: 49}}  # row: {position: value}


def test_matches_zoology_output():
    inputs, labels = multiquery_ar(vocab_size=64, seq_len=16, num_kv_pairs=2, num_examples=3, seed=7)
    assert inputs.tolist() == ZOOLOGY_INPUTS
    for row, targets in ZOOLOGY_TARGETS.items():
        expect = [IGNORE_INDEX] * 16
        for pos, value in targets.items():
            expect[pos + 1] = value
        assert labels[row].tolist() == expect
