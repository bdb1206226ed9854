"""IMDB, AAN and CIFAR-10 loaders on small files written in the released formats (nothing downloads: the hub
path is tested with datasets.load_dataset replaced by an in-memory dataset)."""

import pickle

import datasets
import numpy as np
import pytest
from PIL import Image

from seqzoo.common import ConfigError
from seqzoo.eval.lra import image, retrieval, text


# ---- IMDB ----------------------------------------------------------------------------------------------------

def _write_imdb(root):
    reviews = {("train", "pos"): ["Great film!", "Lovely \u00e9t\u00e9 " * 10], ("train", "neg"): ["Awful."],
               ("test", "pos"): ["Good"], ("test", "neg"): ["Bad", "Worse"]}
    for (part, sentiment), texts in reviews.items():
        folder = root / part / sentiment
        folder.mkdir(parents=True)
        for i, t in enumerate(texts):
            (folder / f"{i}_{7 if sentiment == 'pos' else 2}.txt").write_text(t, encoding="utf-8")
    return reviews


def test_imdb_folder_reads_bytes_and_cuts_them(tmp_path):
    _write_imdb(tmp_path / "aclImdb")
    out = text.read_imdb_folder(tmp_path / "aclImdb", "train", max_length=16)
    assert out["labels"] == [0, 1, 1]  # neg first, files sorted
    assert list(out["input_ids"][0]) == list(b"Awful.")
    assert list(out["input_ids"][2]) == list(("Lovely \u00e9t\u00e9 " * 10).encode("utf-8")[:16])
    assert all(x.max() < 256 for x in out["input_ids"])
    valid = text.read_imdb_folder(tmp_path / "aclImdb", "valid", max_length=100)
    test = text.read_imdb_folder(tmp_path / "aclImdb", "test", max_length=100)
    assert valid["labels"] == test["labels"] == [0, 0, 1]  # LRA: valid = test = IMDB test


def test_imdb_missing_folder_names_the_layout_and_the_hub(tmp_path):
    with pytest.raises(ConfigError, match="aclImdb.*stanfordnlp/imdb"):
        text.read_imdb_folder(tmp_path / "aclImdb", "train", 10)
    (tmp_path / "aclImdb" / "train" / "pos").mkdir(parents=True)
    with pytest.raises(ConfigError, match="train/neg"):
        text.read_imdb_folder(tmp_path / "aclImdb", "train", 10)


def test_imdb_hub_path(monkeypatch):
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": ["ab", "\u00fc"], "label": [1, 0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    out = text.load_imdb_hub("valid", max_length=4)
    assert calls == [("stanfordnlp/imdb", "test")]
    assert [list(x) for x in out["input_ids"]] == [[97, 98], [0xC3, 0xBC]] and out["labels"] == [1, 0]

    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match="stanfordnlp/imdb.*no network.*aclImdb"):
        text.load_imdb_hub("train", 10)
    with pytest.raises(ValueError, match="-1"):
        text.imdb_from_rows(["x"], [-1], 10)


# ---- AAN -----------------------------------------------------------------------------------------------------

def test_aan_tsv_fields_quotes_and_cut(tmp_path):
    long_doc = "x" * 5000
    lines = ["1.0\tP01-1001\tP02-2002\tA \"quoted\" abstract\t" + long_doc,
             "0.0\tid3\tid4\tsecond\tthird \u00e9"]
    path = tmp_path / "new_aan_pairs.train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = retrieval.read_aan_tsv(path, max_length=4000)
    assert out["labels"] == [1, 0]
    assert bytes(out["input_ids"][0].astype(np.uint8)) == b'A "quoted" abstract'  # quotes are characters
    assert len(out["input_ids_2"][0]) == 4000
    assert bytes(out["input_ids_2"][1].astype(np.uint8)) == "third \u00e9".encode()
    via_dir = retrieval.aan_split(tmp_path, "train", 4000)
    assert via_dir["labels"] == [1, 0]


def test_aan_errors(tmp_path):
    path = tmp_path / "new_aan_pairs.eval.tsv"
    path.write_text("1.0\tonly\tthree\n")
    with pytest.raises(ValueError, match="line 1.*5 tab-separated"):
        retrieval.read_aan_tsv(path, 10)
    with pytest.raises(ConfigError, match="new_aan_pairs.test.tsv.*tsv_data"):
        retrieval.aan_split(tmp_path, "test", 10)
    with pytest.raises(ConfigError, match="data_dir is null"):
        retrieval.aan_split(None, "train", 10)


# ---- CIFAR-10 ------------------------------------------------------------------------------------------------

def _write_cifar(root, per_batch=10):
    rng = np.random.default_rng(0)
    root.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=per_batch))
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        batches[name] = (data, labels)
    return batches


def test_grayscale_is_the_luma_formula():
    rgb = np.random.default_rng(1).integers(0, 256, size=(40, 3), dtype=np.uint8)
    gray = image.to_grayscale(rgb)
    expected = np.floor(0.2989 * rgb[:, 0] + 0.5870 * rgb[:, 1] + 0.1140 * rgb[:, 2] + 0.5)
    np.testing.assert_array_equal(gray, expected)
    # PIL's ITU-R 601 conversion (0.299, 0.587, 0.114) agrees to within one level
    pil = np.asarray(Image.fromarray(rgb[None]).convert("L"))[0]
    assert np.abs(pil.astype(int) - gray.astype(int)).max() <= 1


def test_cifar_folder_layout_and_splits(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    train_x, train_y = image.read_cifar_folder(tmp_path / "cifar-10-batches-py", "train")
    valid_x, valid_y = image.read_cifar_folder(tmp_path / "cifar-10-batches-py", "valid")
    test_x, test_y = image.read_cifar_folder(tmp_path / "cifar-10-batches-py", "test")
    assert (len(train_x), len(valid_x), len(test_x)) == (45, 5, 10)  # 90% / 10% of train, all of test
    data, labels = batches["data_batch_1"]
    rgb0 = data[0].reshape(3, 32, 32)  # planes R, G, B
    first = np.floor(0.2989 * rgb0[0] + 0.587 * rgb0[1] + 0.114 * rgb0[2] + 0.5).reshape(-1)
    np.testing.assert_array_equal(train_x[0], first)
    assert list(train_y[:10]) == labels
    assert list(valid_y) == batches["data_batch_5"][1][5:]  # the last 10% of the training images
    assert list(test_y) == batches["test_batch"][1]


def test_cifar_hub_rows_equal_the_folder(tmp_path, monkeypatch):
    batches = _write_cifar(tmp_path / "c")
    data, labels = batches["test_batch"]
    images = [Image.fromarray(d.reshape(3, 32, 32).transpose(1, 2, 0)) for d in data]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: _FakeDS({"img": images, "label": labels}))
    hub_x, hub_y = image.load_cifar_hub("test")
    folder_x, folder_y = image.read_cifar_folder(tmp_path / "c", "test")
    np.testing.assert_array_equal(hub_x, folder_x)
    np.testing.assert_array_equal(hub_y, folder_y)


class _FakeDS(dict):
    @property
    def column_names(self):
        return list(self)


def test_cifar_missing_data(tmp_path):
    with pytest.raises(ConfigError, match="cifar-10-batches-py.*uoft-cs/cifar10"):
        image.read_cifar_folder(tmp_path / "none", "train")
    (tmp_path / "c").mkdir()
    with pytest.raises(ConfigError, match="data_batch_1"):
        image.read_cifar_folder(tmp_path / "c", "valid")
