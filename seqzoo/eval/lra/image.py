"""LRA Image: CIFAR-10 as a sequence of 1024 grayscale pixels (32 x 32, row by row), ids 0..255, 10 classes.

Grayscale as ``tf.image.rgb_to_grayscale`` on uint8 images (what LRA used): ``round(0.2989 R + 0.5870 G +
0.1140 B)``. Splits: train = the first 45,000 training images, valid = the last 5,000 (10%), test = the 10,000
test images.

Sources:

- ``data_dir``: the ``cifar-10-batches-py`` folder of the python release (``cifar-10-python.tar.gz`` from
  https://www.cs.toronto.edu/~kriz/cifar.html): pickled ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``,
  each a dict with ``data`` (uint8 ``[N, 3072]``, the red plane, then green, then blue) and ``labels``;
- the hub dataset ``uoft-cs/cifar10`` (``img`` PIL images, ``label``), used when ``data_dir`` is null.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ._common import MissingDataError, check_split, require_dir, require_file

HUB_DATASET = "uoft-cs/cifar10"
HOW_TO_GET = (f"Point task.data_dir at the cifar-10-batches-py folder of cifar-10-python.tar.gz "
              f"(https://www.cs.toronto.edu/~kriz/cifar.html), holding data_batch_1..5 and test_batch; or set "
              f"task.data_dir null to load the hub dataset {HUB_DATASET!r}")
NUM_TRAIN = 45_000  # of the 50,000 training images; the rest is the validation split
LUMA = np.array([0.2989, 0.5870, 0.1140])


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` RGB -> uint8 ``[...]``: the weighted sum, rounded half up."""
    return np.floor(rgb.astype(np.float64) @ LUMA + 0.5).clip(0, 255).astype(np.uint8)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: ``(gray pixels uint8 [N, 1024], labels int64 [N])``."""
    path = require_file(path, "CIFAR-10 batch", HOW_TO_GET)
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"CIFAR-10 batch {str(path)!r}: expected a dict with 'data' and 'labels'")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"CIFAR-10 batch {str(path)!r}: data must be [N, 3072], got {list(data.shape)}")
    rgb = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return to_grayscale(rgb).reshape(-1, 1024), np.asarray(labels, dtype=np.int64)


def read_cifar_folder(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    root = require_dir(Path(root), "task.data_dir", HOW_TO_GET)
    if check_split(split) == "test":
        return read_cifar_batch(root / "test_batch")
    parts = [read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    pixels = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    return split_train(pixels, labels, split)


def split_train(pixels: np.ndarray, labels: np.ndarray, split: str):
    """The first 90% of the training images for ``train``, the last 10% for ``valid``."""
    cut = int(round(len(pixels) * NUM_TRAIN / 50_000))
    return (pixels[:cut], labels[:cut]) if split == "train" else (pixels[cut:], labels[cut:])


def cifar_from_images(images, labels) -> tuple[np.ndarray, np.ndarray]:
    """Hub rows (PIL images or arrays ``[32, 32, 3]``) -> ``(gray pixels [N, 1024], labels [N])``."""
    rgb = np.stack([np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8)
                    for img in images])
    if rgb.shape[1:] != (32, 32, 3):
        raise ValueError(f"CIFAR-10: images must be 32x32 RGB, got {list(rgb.shape[1:])}")
    return to_grayscale(rgb).reshape(len(rgb), 1024), np.asarray(labels, dtype=np.int64)


def load_cifar_hub(split: str, name: str = HUB_DATASET) -> tuple[np.ndarray, np.ndarray]:
    import datasets

    part = "test" if check_split(split) == "test" else "train"
    try:
        ds = datasets.load_dataset(name, split=part)
    except Exception as e:
        raise MissingDataError(f"CIFAR-10: could not load the hub dataset {name!r} (split {part!r}): "
                               f"{type(e).__name__}: {e}. {HOW_TO_GET}") from e
    image_col = "img" if "img" in ds.column_names else "image"
    pixels, labels = cifar_from_images(ds[image_col], ds["label"])
    return (pixels, labels) if part == "test" else split_train(pixels, labels, split)


__all__ = ["HUB_DATASET", "cifar_from_images", "load_cifar_hub", "read_cifar_batch", "read_cifar_folder",
           "to_grayscale"]
