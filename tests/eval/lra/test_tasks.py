"""The six LRA tasks through the Task interface: data in the released formats -> batches -> the model call ->
metrics, the lra-pair head's save/load, one short training run per head through the trainer, and a config for
every architecture x task."""

import json
import os

import numpy as np
import pytest
import torch

import seqzoo
from seqzoo.eval import get_task, list_tasks
from seqzoo.eval.lra import listops as lo
from seqzoo.eval.lra.tasks import LRA_TASKS, DualEncoderClassifier
from seqzoo.kernels.testing import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TASK_DIRS = {"lra_listops": "listops", "lra_text": "text", "lra_retrieval": "retrieval", "lra_image": "image",
             "lra_pathfinder": "pathfinder", "lra_pathx": "pathx"}


def test_all_six_are_registered():
    assert {cls.name for cls in LRA_TASKS} == set(TASK_DIRS)
    assert set(TASK_DIRS) <= set(list_tasks())


@pytest.mark.parametrize("task_name", sorted(TASK_DIRS))
def test_every_architecture_has_a_config_for_every_lra_task(task_name):
    """A new architecture must add configs/lra/<task>/<arch>.yaml for each task (usually just its two bases)."""
    from seqzoo.config import load_config

    for arch in seqzoo.list_architectures():
        path = os.path.join(ROOT, "configs", "lra", TASK_DIRS[task_name], f"{arch}.yaml")
        assert os.path.isfile(path), f"missing {os.path.relpath(path, ROOT)}"
        cfg = load_config(path)
        assert cfg.task["name"] == task_name and cfg.model["model_type"] == arch
        assert cfg.output_dir == os.path.join("runs", "lra", TASK_DIRS[task_name], arch)


def _tiny_model(task, **fields):
    cfg = seqzoo.make_config("transformer", **{**task.model_config_defaults(), "hidden_size": 32,
                                                "num_hidden_layers": 1, "num_heads": 2, **fields})
    task.check_model_config(cfg)
    return task.build_model(cfg)


def _run(task, split="train", batch=4):
    ds = task.dataset(split)
    examples = [ds[i] for i in range(min(batch, len(ds)))]
    batch = task.collate(examples)
    model = _tiny_model(task, bidirectional=True)
    out = task.step(model, batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    return ds, batch, task.finalize({k: v.detach() for k, v in out.sums.items()})


def test_listops_task_generated_and_released(tmp_path):
    task = get_task("lra_listops", {"min_length": 20, "max_length": 90, "num_train": 12, "num_valid": 4,
                                    "num_test": 4}, cache_dir=tmp_path / "cache")
    ds, batch, metrics = _run(task)
    assert len(ds) == 12 and batch["input_ids"].max() < lo.VOCAB_SIZE
    # the label of every example is what the evaluator reads off its tokens
    for row in ds:
        symbols = [lo.SYMBOLS[i - 1] for i in row["input_ids"].tolist()]
        assert lo.evaluate_tokens(symbols) == int(row["labels"])
    assert 0 <= metrics["accuracy"] <= 1 and metrics["num_targets"] == 4
    # released files
    trees = lo.generate_listops(6, seed=9, min_length=10, max_length=60)
    data = tmp_path / "listops-1000"
    data.mkdir()
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        lo.write_listops_tsv(data / name, trees)
    task = get_task("lra_listops", {"data_dir": str(data)}, cache_dir=tmp_path / "cache")
    ds = task.dataset("valid")
    assert [int(x) for x in ds["labels"]] == [lo.tree_value(t) for t in trees]
    assert task.split_size("valid") is None


def test_text_task_from_an_imdb_folder(tmp_path):
    from tests.eval.lra.test_loaders import _write_imdb

    _write_imdb(tmp_path / "aclImdb")
    task = get_task("lra_text", {"data_dir": str(tmp_path / "aclImdb"), "max_length": 8}, cache_dir=tmp_path / "c")
    ds, batch, _ = _run(task)
    assert batch["input_ids"].shape[1] <= 8 and batch["input_ids"].max() <= 256
    assert task.model_config_defaults()["vocab_size"] == 259 and task.tokenizer() is not None


def test_image_task_from_cifar_batches(tmp_path):
    from tests.eval.lra.test_loaders import _write_cifar

    _write_cifar(tmp_path / "cifar")
    task = get_task("lra_image", {"data_dir": str(tmp_path / "cifar")}, cache_dir=tmp_path / "c")
    ds, batch, _ = _run(task)
    assert len(ds) == 45 and batch["input_ids"].shape == (4, 1024)
    assert len(task.dataset("valid")) == 5 and len(task.dataset("test")) == 10


def test_pathfinder_tasks_generated(tmp_path):
    task = get_task("lra_pathfinder", {"num_train": 4, "num_valid": 2, "num_test": 2}, cache_dir=tmp_path / "c")
    ds, batch, _ = _run(task)
    assert batch["input_ids"].shape == (4, 1024) and sorted(int(x) for x in ds["labels"]) == [0, 0, 1, 1]
    # Path-X: the data only (a model call on 16384 tokens is a GPU job)
    task = get_task("lra_pathx", {"num_train": 2, "num_valid": 2, "num_test": 2}, cache_dir=tmp_path / "c")
    batch = task.collate([task.dataset("test")[i] for i in range(2)])
    assert batch["input_ids"].shape == (2, 128 * 128) and task.max_length == 16384


def test_pathfinder_task_from_a_released_folder(tmp_path):
    from tests.eval.lra.test_pathfinder import _write_release

    rng = np.random.default_rng(0)
    entries = [(0, i, i % 2, rng.integers(0, 256, 1024, dtype=np.uint8)) for i in range(20)]
    _write_release(tmp_path / "pathfinder32", "curv_contour_length_14", entries)
    task = get_task("lra_pathfinder", {"data_dir": str(tmp_path / "pathfinder32")}, cache_dir=tmp_path / "c")
    sizes = [len(task.dataset(s)) for s in ("train", "valid", "test")]
    assert sizes == [16, 2, 2]
    rows = {tuple(r.tolist()) for s in ("train", "valid", "test") for r in task.dataset(s)["input_ids"]}
    assert rows == {tuple(e[3].tolist()) for e in entries}  # every image once


def _write_aan(folder, n=8, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval", "test"):
        lines = []
        for i in range(n):
            a = "".join(rng.choice(list("abcdef "), size=rng.integers(5, 30)))
            b = "".join(rng.choice(list("abcdef "), size=rng.integers(5, 30)))
            lines.append(f"{float(i % 2)}\tid{i}\tid{i + 100}\t{a}\t{b}")
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pair_head_padding_and_save_load(tmp_path, pooling):
    _write_aan(tmp_path / "aan")
    task = get_task("lra_retrieval", {"data_dir": str(tmp_path / "aan")}, cache_dir=tmp_path / "c")
    ds = task.dataset("train")
    model = _tiny_model(task, bidirectional=True, classifier_pooling=pooling).eval()
    assert isinstance(model, DualEncoderClassifier)
    examples = [ds[i] for i in range(4)]
    batch = task.collate(examples)
    with torch.no_grad():
        batched = task.step(model, batch, loss=False).sums
        logits = model(batch["input_ids"], batch["attention_mask"], batch["input_ids_2"], batch["attention_mask_2"])
        alone = torch.cat([model(*[task.collate([e])[k] for k in ("input_ids", "attention_mask", "input_ids_2",
                                                                       "attention_mask_2")]) for e in examples])
    assert_close("pair logits, padded batch vs one pair at a time", logits, alone, 1e-4)
    assert float(batched["accuracy"][1]) == 4
    # the pair is not symmetric in general, but swapping changes u - v only: the logits move
    task.save_model(model, tmp_path / "saved")
    assert (tmp_path / "saved" / "pair_head.safetensors").is_file()
    loaded = task.load_model(tmp_path / "saved").eval()
    with torch.no_grad():
        again = loaded(batch["input_ids"], batch["attention_mask"], batch["input_ids_2"], batch["attention_mask_2"])
    assert_close("pair logits after save/load", again, logits, 0)


def test_retrieval_without_data_says_where(tmp_path):
    task = get_task("lra_retrieval", {}, cache_dir=tmp_path / "c")
    with pytest.raises(seqzoo.common.ConfigError, match="new_aan_pairs"):
        task.dataset("train")


@pytest.mark.parametrize("task_name", ["lra_retrieval", "lra_listops"])
def test_train_and_eval_cli(tmp_path, monkeypatch, task_name):
    """A few optimizer steps through the trainer, then the eval CLI on the saved model."""
    from seqzoo.eval.__main__ import main as eval_main
    from seqzoo.trainer import main as train_main

    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "cache"))
    if task_name == "lra_retrieval":
        _write_aan(tmp_path / "aan")
        config, extra = "configs/lra/retrieval/deltanet.yaml", [f"task.data_dir={tmp_path / 'aan'}"]
    else:
        config, extra = "configs/lra/listops/transformer.yaml", [
            "task.min_length=20", "task.max_length=60", "task.num_train=32", "task.num_valid=8", "task.num_test=8"]
    run = tmp_path / "run"
    args = [os.path.join(ROOT, config), f"output_dir={run}", "model.hidden_size=32", "model.num_hidden_layers=1",
            "model.num_heads=2", "model.intermediate_size=32", "train.max_steps=3", "train.batch_size=4",
            "train.warmup_steps=0", "train.report_to=[none]", "train.progress_bar=false", "train.checkpoint_every=null",
            "eval.every_steps=null", "eval.batch_size=4", *extra]
    assert train_main(args) in (0, None)
    result = json.loads((run / "eval.json").read_text())["metrics"]
    assert 0 <= result["accuracy"] <= 1
    assert eval_main(["--model", str(run), "--output", str(tmp_path / "e.json")]) in (0, None)
    again = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert again["accuracy"] == pytest.approx(result["accuracy"])
