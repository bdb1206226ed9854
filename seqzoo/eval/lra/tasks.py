"""The six LRA tasks as registered :class:`~seqzoo.eval.base.Task` classes, and the dual-encoder pair head of
Retrieval.

| task | data | tokens | classes | head |
|---|---|---|---|---|
| ``lra_listops`` | generated (LRA's generator) or ``basic_*.tsv`` | 16 ids, <= ``max_length`` | 10 | classification |
| ``lra_text`` | IMDB (``aclImdb`` folder or hub ``stanfordnlp/imdb``) | bytes, <= 4096 | 2 | classification |
| ``lra_retrieval`` | AAN ``new_aan_pairs.*.tsv`` | bytes, 2 x <= 4000 | 2 | ``lra-pair`` |
| ``lra_image`` | CIFAR-10 (``cifar-10-batches-py`` or hub ``uoft-cs/cifar10``) | 1024 gray pixels | 10 | classification |
| ``lra_pathfinder`` | generated, or a ``pathfinder32`` folder | 1024 pixels | 2 | classification |
| ``lra_pathx`` | generated, or a ``pathfinder128`` folder | 16384 pixels | 2 | classification |

The classification head is seqzoo's ``AutoModelForSequenceClassification``: pooling is the model's
``classifier_pooling`` (``mean``, ``last`` or ``cls``) and ``bidirectional: true`` makes any mixer an encoder
(``seqzoo/architectures/base/bidirectional.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...common import ConfigError
from ..base import Task
from ..heads import Head, HeadOutput, register_head
from . import image as image_data
from . import listops as listops_data
from . import pathfinder as pf
from . import retrieval as retrieval_data
from . import text as text_data
from ._common import BYTE_PAD_ID, BYTE_VOCAB_SIZE, check_split, split_seed


def _positive(settings, *names) -> None:
    for n in names:
        v = getattr(settings, n)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"task.{n}: expected a positive integer, got {v!r}")


def _pad(seqs: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors to the longest: ``(ids [B, T], mask [B, T])``."""
    length = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), length), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return ids, mask


def _dataset(columns: dict, fixed_length: int | None = None):
    """A ``datasets.Dataset`` of token columns (``input_ids``, ``input_ids_2``: int16 lists; fixed-length pixel
    rows: uint8) and integer ``labels``."""
    import datasets

    features, data = {}, {}
    for name, rows in columns.items():
        if name == "labels":
            features[name] = datasets.Value("int64")
            data[name] = [int(x) for x in rows]
        elif fixed_length is not None:
            features[name] = datasets.Sequence(datasets.Value("uint8"), length=fixed_length)
            data[name] = np.asarray(rows, dtype=np.uint8)
        else:
            features[name] = datasets.Sequence(datasets.Value("int16"))
            data[name] = [np.asarray(x, dtype=np.int16) for x in rows]
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


class LRATask(Task):
    """Shared by the LRA tasks: byte/pixel ids (vocabulary 259, pad 256) unless a task says otherwise."""

    head = "classification"
    pad_token_id = BYTE_PAD_ID

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def num_examples(self, split: str) -> int | None:
        return None

    def split_size(self, split: str) -> int | None:
        return self.num_examples(split)


# --------------------------------------------------------------------------------------------------------------
# ListOps
# --------------------------------------------------------------------------------------------------------------

class ListOpsTask(LRATask):
    name = "lra_listops"
    Settings = listops_data.ListOpsSettings
    data_version = 1
    pad_token_id = listops_data.PAD_ID

    @classmethod
    def validate_settings(cls, s) -> None:
        listops_data.check_listops_args(s.min_length, s.max_length, s.max_depth, s.max_args, prefix="task.")
        _positive(s, "num_train", "num_valid", "num_test")

    num_labels = property(lambda self: listops_data.NUM_CLASSES)
    vocab_size = property(lambda self: listops_data.VOCAB_SIZE)
    max_length = property(lambda self: self.settings.max_length)

    def model_config_defaults(self) -> dict:
        out = super().model_config_defaults()
        out.update(pad_token_id=listops_data.PAD_ID, bos_token_id=None, eos_token_id=None)
        return out

    def num_examples(self, split: str) -> int | None:
        return None if self.settings.data_dir else getattr(self.settings, f"num_{split}")

    def split_params(self, split: str) -> dict:
        s = dataclasses.asdict(self.settings)
        if s["data_dir"] is not None:  # the released files: the folder and the cut are what matter
            return {"data_dir": str(Path(s["data_dir"]).resolve()), "max_length": s["max_length"], "split": split}
        return {**s, "split": split}

    def generate(self, split: str):
        return _dataset(listops_data.listops_split(self.settings, split))


# --------------------------------------------------------------------------------------------------------------
# Text (IMDB bytes)
# --------------------------------------------------------------------------------------------------------------

@dataclass
class TextSettings:
    data_dir: str | None = None  # an aclImdb folder; null: the hub dataset below
    hub_dataset: str = text_data.HUB_DATASET
    max_length: int = 4096  # bytes kept per review (LRA / S4 / MEGA: ~4K)


class TextTask(LRATask):
    name = "lra_text"
    Settings = TextSettings
    num_labels = property(lambda self: 2)
    max_length = property(lambda self: self.settings.max_length)

    @classmethod
    def validate_settings(cls, s) -> None:
        _positive(s, "max_length")

    def tokenizer(self):
        from ...tokenizer import ByteTokenizer

        return ByteTokenizer()

    def split_params(self, split: str) -> dict:
        source = str(Path(self.settings.data_dir).resolve()) if self.settings.data_dir else self.settings.hub_dataset
        return {"source": source, "max_length": self.settings.max_length, "split": text_data.IMDB_SPLIT[split]}

    def generate(self, split: str):
        s = self.settings
        if s.data_dir is not None:
            cols = text_data.read_imdb_folder(s.data_dir, split, s.max_length)
        else:
            cols = text_data.load_imdb_hub(split, s.max_length, s.hub_dataset)
        return _dataset(cols)


# --------------------------------------------------------------------------------------------------------------
# Retrieval (AAN pairs) and its dual-encoder head
# --------------------------------------------------------------------------------------------------------------

@dataclass
class RetrievalSettings:
    data_dir: str | None = None  # the folder with new_aan_pairs.{train,eval,test}.tsv (required)
    max_length: int = 4000  # bytes kept per document (LRA: 4000)


class RetrievalTask(LRATask):
    name = "lra_retrieval"
    head = "lra-pair"
    Settings = RetrievalSettings
    num_labels = property(lambda self: 2)
    max_length = property(lambda self: self.settings.max_length)

    @classmethod
    def validate_settings(cls, s) -> None:
        _positive(s, "max_length")

    def split_params(self, split: str) -> dict:
        folder = str(Path(self.settings.data_dir).resolve()) if self.settings.data_dir else None
        return {"data_dir": folder, "max_length": self.settings.max_length, "split": split}

    def generate(self, split: str):
        return _dataset(retrieval_data.aan_split(self.settings.data_dir, split, self.settings.max_length))


class DualEncoderClassifier(nn.Module):
    """LRA's two-tower matcher: one encoder (any seqzoo backbone, shared by both documents) pools each document
    to ``u`` and ``v``; an MLP classifies ``[u, v, u * v, u - v]`` (LRA: dense to the hidden width, ReLU, dense
    to the classes). Both documents go through the encoder as one batch."""

    def __init__(self, config, encoder: nn.Module | None = None):
        super().__init__()
        from transformers import AutoModel

        from ...architectures.base.bidirectional import ClsToken

        self.config = config
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config)
        h = config.hidden_size
        self.cls_token = ClsToken(h) if config.classifier_pooling == "cls" else None
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token.weight, std=config.initializer_range)
        self.mlp = nn.Sequential(nn.Linear(4 * h, h), nn.ReLU(), nn.Linear(h, config.num_labels))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        from ...architectures.base.bidirectional import pool_hidden

        if self.cls_token is not None:
            embeds, attention_mask = self.cls_token.prepend(self.encoder.get_input_embeddings()(input_ids),
                                                            attention_mask)
            hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        else:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return pool_hidden(hidden.last_hidden_state, attention_mask, self.config.classifier_pooling)  # [B, H]

    def forward(self, input_ids, attention_mask, input_ids_2, attention_mask_2):
        B = input_ids.shape[0]
        T = max(input_ids.shape[1], input_ids_2.shape[1])
        ids = torch.cat([F.pad(input_ids, (0, T - input_ids.shape[1]), value=0),
                         F.pad(input_ids_2, (0, T - input_ids_2.shape[1]), value=0)])  # [2B, T]
        mask = torch.cat([F.pad(attention_mask, (0, T - attention_mask.shape[1])),
                          F.pad(attention_mask_2, (0, T - attention_mask_2.shape[1]))])  # [2B, T]
        pooled = self.encode(ids, mask)  # [2B, H]
        u, v = pooled[:B], pooled[B:]
        return self.mlp(torch.cat([u, v, u * v, u - v], dim=-1))  # [B, num_labels]


PAIR_HEAD_FILE = "pair_head.safetensors"


@register_head
class PairClassificationHead(Head):
    """``lra-pair``: :class:`DualEncoderClassifier` over any architecture's ``AutoModel``. Saved as the encoder's
    ``save_pretrained`` folder plus ``pair_head.safetensors`` (the MLP and the CLS vector)."""

    name = "lra-pair"
    auto_class = "AutoModel"

    def config_defaults(self, task) -> dict:
        return {"num_labels": task.num_labels}

    def pretrained_overrides(self, task) -> dict:
        return {"num_labels": task.num_labels}

    def check_config(self, task, config, where: str) -> None:
        if getattr(config, "num_labels", None) != task.num_labels:
            raise ConfigError(f"{where}.num_labels: the model has {getattr(config, 'num_labels', None)} labels, "
                              f"task {task.name!r} needs {task.num_labels}")

    def build(self, config, task) -> nn.Module:
        return DualEncoderClassifier(config)

    def load(self, path: str, task, **overrides) -> nn.Module:
        from safetensors.torch import load_file
        from transformers import AutoModel

        from ...common import quiet_progress_bars

        with quiet_progress_bars():
            encoder = AutoModel.from_pretrained(path, **{**self.pretrained_overrides(task), **overrides})
        model = DualEncoderClassifier(encoder.config, encoder=encoder)
        head_file = Path(path) / PAIR_HEAD_FILE
        if head_file.is_file():  # absent when fine-tuning a plain backbone checkpoint: a fresh head
            state = load_file(str(head_file))
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("encoder.") for k in missing):
                raise ValueError(f"{head_file}: does not match the pair head (missing "
                                 f"{[k for k in missing if not k.startswith('encoder.')]}, unexpected {unexpected})")
        return model

    def save(self, model: nn.Module, directory: str, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_file

        from ...common import quiet_progress_bars

        state = state_dict if state_dict is not None else model.state_dict()
        encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        head_state = {k: v.detach().cpu().contiguous() for k, v in state.items() if not k.startswith("encoder.")}
        with quiet_progress_bars():
            model.encoder.save_pretrained(directory, state_dict=encoder_state, safe_serialization=True)
        save_file(head_state, str(Path(directory) / PAIR_HEAD_FILE))

    def collate(self, task, examples: list[dict]) -> dict:
        ids, mask = _pad([torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples], task.pad_token_id)
        ids2, mask2 = _pad([torch.as_tensor(e["input_ids_2"], dtype=torch.long) for e in examples],
                           task.pad_token_id)
        labels = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "input_ids_2": ids2, "attention_mask_2": mask2,
                "labels": labels}

    def forward(self, model, batch, *, loss, carry=None) -> HeadOutput:
        logits = model(batch["input_ids"], batch["attention_mask"], batch["input_ids_2"], batch["attention_mask_2"])
        value = F.cross_entropy(logits.float(), batch["labels"]) if loss else None
        return HeadOutput(loss=value, logits=logits)

    def num_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum() + batch["attention_mask_2"].sum())


# --------------------------------------------------------------------------------------------------------------
# Image (CIFAR-10 grayscale)
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ImageSettings:
    data_dir: str | None = None  # a cifar-10-batches-py folder; null: the hub dataset below
    hub_dataset: str = image_data.HUB_DATASET


class ImageTask(LRATask):
    name = "lra_image"
    Settings = ImageSettings
    num_labels = property(lambda self: 10)
    max_length = property(lambda self: 1024)

    def split_params(self, split: str) -> dict:
        source = str(Path(self.settings.data_dir).resolve()) if self.settings.data_dir else self.settings.hub_dataset
        return {"source": source, "split": split}

    def generate(self, split: str):
        s = self.settings
        if s.data_dir is not None:
            pixels, labels = image_data.read_cifar_folder(s.data_dir, split)
        else:
            pixels, labels = image_data.load_cifar_hub(split, s.hub_dataset)
        return _dataset({"input_ids": pixels, "labels": labels}, fixed_length=1024)


# --------------------------------------------------------------------------------------------------------------
# Pathfinder and Path-X
# --------------------------------------------------------------------------------------------------------------

@dataclass
class PathfinderSettings:
    data_dir: str | None = None  # a released pathfinderNN folder; null: generate Pathfinder-style images
    condition: str = "curv_contour_length_14"  # release folder: curv_baseline / _9 / _14 (hard)
    split_seed: int = 42  # released data: the 80/10/10 permutation (S4's seed)
    resolution: int = 32  # image side; pixels per example = resolution**2
    # the generator (data_dir null): sizes as the release's 80/10/10 of 200k, and the geometry
    num_train: int = 160_000
    num_valid: int = 20_000
    num_test: int = 20_000
    seed: int = 0
    contour_length: int = 14
    num_distractors: int = 1
    paddle_length: float = 1.0  # output pixels at resolution 32 (scaled with the resolution)
    gap: float = 0.75
    max_turn: float = 45.0  # degrees
    clearance: float = 2.0


class PathfinderTask(LRATask):
    name = "lra_pathfinder"
    Settings = PathfinderSettings
    data_version = 1
    num_labels = property(lambda self: 2)
    max_length = property(lambda self: self.settings.resolution ** 2)

    @classmethod
    def validate_settings(cls, s) -> None:
        if s.condition not in pf.CONDITIONS:
            raise ConfigError(f"task.condition: expected one of {', '.join(pf.CONDITIONS)}, got {s.condition!r}")
        _positive(s, "num_train", "num_valid", "num_test")
        cls.geometry(s).validate("task.")

    @staticmethod
    def geometry(s) -> pf.PathfinderGeometry:
        return pf.PathfinderGeometry(resolution=s.resolution, contour_length=s.contour_length,
                                     num_distractors=s.num_distractors, paddle_length=s.paddle_length, gap=s.gap,
                                     max_turn=s.max_turn, clearance=s.clearance)

    def num_examples(self, split: str) -> int | None:
        return None if self.settings.data_dir else getattr(self.settings, f"num_{split}")

    def split_params(self, split: str) -> dict:
        s = self.settings
        if s.data_dir is not None:
            return {"data_dir": str(Path(s.data_dir).resolve()), "condition": s.condition,
                    "resolution": s.resolution, "split_seed": s.split_seed, "split": split}
        geo = dataclasses.asdict(self.geometry(s))
        return {**geo, "num_examples": getattr(s, f"num_{split}"), "seed": split_seed(s.seed, split), "split": split}

    _folder_cache: dict = {}

    def generate(self, split: str):
        s = self.settings
        check_split(split)
        if s.data_dir is not None:
            key = (str(Path(s.data_dir).resolve()), s.condition, s.resolution)
            if key not in self._folder_cache:  # read the folder once for the three splits
                type(self)._folder_cache = {key: pf.read_pathfinder_folder(s.data_dir, s.condition, s.resolution)}
            pixels, labels = self._folder_cache[key]
            idx = pf.split_indices(len(labels), s.split_seed)[split]
            pixels, labels = pixels[idx], labels[idx]
        else:
            p = self.split_params(split)
            pixels, labels = pf.generate_pathfinder(p["num_examples"], p["seed"], self.geometry(s))
        return _dataset({"input_ids": pixels, "labels": labels}, fixed_length=s.resolution ** 2)


@dataclass
class PathXSettings(PathfinderSettings):
    resolution: int = 128


class PathXTask(PathfinderTask):
    name = "lra_pathx"
    Settings = PathXSettings


LRA_TASKS = (ListOpsTask, TextTask, RetrievalTask, ImageTask, PathfinderTask, PathXTask)

__all__ = ["DualEncoderClassifier", "ImageTask", "LRA_TASKS", "ListOpsTask", "PairClassificationHead",
           "PathXTask", "PathfinderTask", "RetrievalTask", "TextTask"]
