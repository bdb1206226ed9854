"""The experiment-config system: one YAML file per run, overridable field by field from the command line.

A run config has five top-level keys::

    output_dir: runs/mqar/transformer    # where everything the run writes goes
    model:  {model_type: transformer, hidden_size: 64, ...}   # or {pretrained: PATH, ...} to fine-tune
    task:   {name: mqar, seq_len: 64, ...}                     # the task and its parameters
    train:  {max_steps: 1000, lr: 1.0e-3, ...}                 # see TrainConfig below
    eval:   {every_steps: 200, ...}                            # see EvalConfig below

A file may name base files (``base: _common.yaml`` or ``base: [a.yaml, b.yaml]``, relative to the file):
their values come first and the file's own override them, mapping by mapping (lists are replaced, not
appended). Without ``output_dir`` a run goes to ``runs/<the file's path below configs/>``
(``configs/mqar/deltanet.yaml`` -> ``runs/mqar/deltanet``). The resolved config a run writes
(``run_config.yaml``) is complete: every default filled in, no ``base``.

Overrides are ``section.field=value`` (``train.lr=3e-4``, ``model.num_hidden_layers=4``,
``output_dir=/tmp/run``); the value is parsed as YAML (so ``[0.9, 0.95]``, ``true``, ``null`` work) and then
type-checked like a value from the file. Every key is checked: an unknown key or a value of the wrong type
is a :class:`ConfigError` that names the key, what it got and the valid choices.

``model`` fields are checked against the architecture's config class (its dataclass fields or its
``__init__`` signature), then the config is built once (:func:`build_model_config`), so the architecture's own
checks -- the per-layer ``layers`` specs included -- and the task's checks of the model fail here too, as
errors naming ``model.FIELD``; ``task`` fields against the task's ``Settings`` dataclass, ``train``/``eval``
against the dataclasses below.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .common import ConfigError, resolve_model_dir
# re-exported: ``from seqzoo.config import ConfigError, check_type, ...`` keeps working
from .fields import build_dataclass, check_type, dataclass_types, type_name, unknown_key_error  # noqa: F401


# --------------------------------------------------------------------------------------------------------------
# train / eval sections
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # per process, per micro-batch; effective = batch_size * grad_accum * num_processes
    grad_accum: int = 1  # micro-batches per optimizer step
    optimizer: Literal["adamw", "lion"] = "adamw"
    lr: float = 1.0e-3  # peak learning rate (Lion usually wants 3-10x less than AdamW)
    weight_decay: float = 0.1  # decoupled; not applied to biases, norms or other 1-D parameters
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1.0e-8  # AdamW only
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    max_grad_norm: Union[float, None] = 1.0  # null: no clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    log_every: int = 10  # steps between metrics.jsonl lines / tracker points
    checkpoint_every: Union[int, None] = None  # steps between checkpoints; null: no intermediate checkpoints
    keep_checkpoints: int = 2  # keep the newest K checkpoints
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # allow starting afresh in an output_dir that holds another run
    report_to: list[str] = field(default_factory=lambda: ["auto"])  # auto | tensorboard | wandb | none
    project: str = "seqzoo"  # tracker project name (W&B project, TensorBoard sub-folder)
    num_workers: int = 0  # DataLoader worker processes
    data_cache_dir: Union[str, None] = None  # task data cache; null: $SEQZOO_CACHE or ~/.cache/seqzoo/datasets
    progress_bar: bool = True


@dataclass
class EvalConfig:
    every_steps: Union[int, None] = None  # steps between validation passes; null: only at the end
    batch_size: int = 256
    max_batches: Union[int, None] = None  # cap the periodic validation pass; the final test pass is complete
    # minimum final test metrics, e.g. {accuracy: 0.99}; a run that misses one says so and exits with status 1
    require: dict[str, float] = field(default_factory=dict)


# the PreTrainedConfig kwargs a YAML `model` section may set besides the architecture's own fields
COMMON_MODEL_KWARGS: dict[str, Any] = {
    "tie_word_embeddings": bool,
    "pad_token_id": Union[int, None],
    "bos_token_id": Union[int, None],
    "eos_token_id": Union[int, None],
    "initializer_range": float,
}
# keys of the model section that are not config fields
MODEL_META_KEYS = ("model_type", "pretrained")


# --------------------------------------------------------------------------------------------------------------
# type checking
# --------------------------------------------------------------------------------------------------------------


def _type_of_default(default: Any) -> Any:
    if default is inspect.Parameter.empty or default is None:
        return Any
    for tp in (bool, int, float, str):
        if isinstance(default, tp):
            return tp
    if isinstance(default, (list, tuple)):
        return list
    return Any


def config_field_types(config_class: type) -> dict[str, Any]:
    """The fields a model config class accepts and their types: dataclass fields when the class is a dataclass
    (transformers 5 configs can be), else the ``__init__`` signature, annotated type first, else the type of
    the default."""
    from transformers import PreTrainedConfig

    out: dict[str, Any] = {}
    # fields of transformers' PreTrainedConfig itself are allowed only through COMMON_MODEL_KWARGS
    base_fields = {f.name for f in dataclasses.fields(PreTrainedConfig)} if dataclasses.is_dataclass(
        PreTrainedConfig) else set()
    if dataclasses.is_dataclass(config_class):
        try:
            dc_hints = typing.get_type_hints(config_class)
        except Exception:
            dc_hints = {}
        for f in dataclasses.fields(config_class):
            if f.name.startswith("_") or f.name in base_fields:
                continue
            tp = dc_hints.get(f.name, Any)
            out[f.name] = tp if not isinstance(tp, str) else Any
    # an architecture's __init__ takes its own fields and passes **kwargs up: walk the classes up to (not
    # including) PreTrainedConfig
    for klass in config_class.__mro__:
        if klass is PreTrainedConfig or not (isinstance(klass, type) and issubclass(klass, PreTrainedConfig)):
            break
        if "__init__" not in klass.__dict__:
            continue
        init = klass.__dict__["__init__"]
        try:
            hints = typing.get_type_hints(init)
        except Exception:
            hints = {}
        for name, param in inspect.signature(init).parameters.items():
            if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in out:
                continue
            out[name] = hints.get(name) or _type_of_default(param.default)
    for name, tp in COMMON_MODEL_KWARGS.items():
        out.setdefault(name, tp)
    return out


def check_model_fields(fields: dict, config_class: type, section: str = "model") -> dict:
    """Check the config fields of a ``model`` section (without model_type / pretrained) against the class."""
    types_ = config_field_types(config_class)
    out = {}
    for key, value in fields.items():
        if key not in types_:
            raise unknown_key_error(f"{section}.{key}", list(types_) + list(MODEL_META_KEYS))
        out[key] = check_type(f"{section}.{key}", value, types_[key])
    return out


# --------------------------------------------------------------------------------------------------------------
# the run config
# --------------------------------------------------------------------------------------------------------------

SECTIONS = ("output_dir", "model", "task", "train", "eval")


@dataclass
class RunConfig:
    output_dir: str
    model: dict  # model_type or pretrained, plus config fields (checked)
    task: dict  # name plus the task's settings (checked, defaults filled in)
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict:
        return {
            "output_dir": self.output_dir,
            "model": dict(self.model),
            "task": dict(self.task),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
        }


def load_yaml(path: str | Path) -> dict:
    """One YAML file as a mapping (its ``base`` not applied; see :func:`load_composed`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist" if not path.exists()
                          else f"config path {str(path)!r} is not a file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping with keys {', '.join(SECTIONS)}, "
                          f"got {type(data).__name__}")
    return data


BASE_KEY = "base"


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base`` (both left untouched): mappings merge key by key, recursively; any other
    value (a list, a scalar, null) replaces the base's."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_composed(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file with its bases applied. ``base: FILE`` or ``base: [FILE, ...]`` (paths relative to the
    file that names them) are loaded first, each with its own bases, and merged in order (a later base
    overrides an earlier one); the file's own keys override them all (:func:`deep_merge`). The result has no
    ``base`` key. A file that is its own base, directly or through others, is an error naming the chain."""
    path = Path(path)
    data = load_yaml(path)
    here = path.resolve()
    if here in _chain:
        chain = " -> ".join(str(p) for p in (*_chain[_chain.index(here):], here))
        raise ConfigError(f"config file {str(path)!r}: its bases form a cycle: {chain}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"config file {str(path)!r}: base: expected a file name or a list of file names "
                          f"(relative to the file), got {bases!r}")
    merged: dict = {}
    for name in bases:
        base_path = path.parent / name
        if not base_path.is_file():
            raise ConfigError(f"config file {str(path)!r}: base {name!r}: {str(base_path)!r} "
                              f"{'is not a file' if base_path.exists() else 'does not exist'}")
        merged = deep_merge(merged, load_composed(base_path, (*_chain, here)))
    return deep_merge(merged, data)


def default_output_dir(path: str | Path) -> str:
    """Where a config file's run goes when it names no ``output_dir``: ``runs/`` + the file's path below its
    ``configs/`` folder, without ``.yaml`` (``configs/mqar/deltanet.yaml`` -> ``runs/mqar/deltanet``); for a
    file outside any ``configs/`` folder, ``runs/`` + the file's name without ``.yaml``. Relative to the
    working directory, like an ``output_dir`` written in the file."""
    parts = Path(path).resolve().parts
    folders = parts[:-1]
    if "configs" in folders:
        start = len(folders) - folders[::-1].index("configs")  # below the innermost configs/ folder
        rel = Path(*parts[start:]).with_suffix("")
    else:
        rel = Path(Path(path).stem)
    return str(Path("runs") / rel)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.field=value`` (or ``output_dir=value``) overrides to a raw config dict (copied)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.field=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        if parts[0] not in SECTIONS:
            raise unknown_key_error(key if len(parts) == 1 else parts[0], SECTIONS)
        if parts[0] == "output_dir":
            if len(parts) != 1:
                raise ConfigError(f"override {item!r}: output_dir has no fields")
            raw["output_dir"] = value
            continue
        if len(parts) != 2 or not parts[1]:
            raise ConfigError(f"override {item!r}: expected {parts[0]}.FIELD=value")
        section = raw.get(parts[0])
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a mapping, got {section!r}")
        section[parts[1]] = value
        raw[parts[0]] = section
    return raw


def resolve(raw: dict) -> RunConfig:
    """Check a raw config dict completely and fill in defaults. Model fields are checked against the
    architecture's config class (after ``import seqzoo`` registered it); for ``pretrained`` models against the
    checkpoint's config class; task fields against the task's Settings."""
    for key in raw:
        if key not in SECTIONS:
            raise unknown_key_error(key, SECTIONS)
    output_dir = raw.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"output_dir: expected a directory path (string), got {output_dir!r}")
    train = build_dataclass(TrainConfig, raw.get("train"), "train")
    eval_ = build_dataclass(EvalConfig, raw.get("eval"), "eval")
    _check_train(train, eval_)

    from .eval import get_task_class

    task_raw = raw.get("task")
    if not isinstance(task_raw, dict) or "name" not in task_raw:
        from .eval import list_tasks

        raise ConfigError(f"task: expected a mapping with a 'name' (one of {', '.join(list_tasks())}), "
                          f"got {task_raw!r}")
    task_raw = dict(task_raw)
    name = task_raw.pop("name")
    task_cls = get_task_class(name)
    settings = build_dataclass(task_cls.Settings, task_raw, "task")
    task_cls.validate_settings(settings)
    task = {"name": name, **dataclasses.asdict(settings)}

    model = resolve_model_section(raw.get("model"))
    # build the model config once (no data, no weights): the architecture's checks of every field, the layer
    # specs included, and the task's checks of the model, as errors naming the key
    build_model_config(model, task_cls(settings))
    return RunConfig(output_dir=output_dir, model=model, task=task, train=train, eval=eval_)


def _check_train(train: TrainConfig, eval_: EvalConfig) -> None:
    def positive(key, value, allow_none=False):
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            raise ConfigError(f"{key}: expected a positive number, got {value!r}")

    positive("train.max_steps", train.max_steps)
    positive("train.batch_size", train.batch_size)
    positive("train.grad_accum", train.grad_accum)
    positive("train.lr", train.lr)
    positive("train.log_every", train.log_every)
    positive("train.checkpoint_every", train.checkpoint_every, allow_none=True)
    positive("train.keep_checkpoints", train.keep_checkpoints)
    positive("train.max_grad_norm", train.max_grad_norm, allow_none=True)
    positive("eval.batch_size", eval_.batch_size)
    positive("eval.every_steps", eval_.every_steps, allow_none=True)
    positive("eval.max_batches", eval_.max_batches, allow_none=True)
    if train.weight_decay < 0:
        raise ConfigError(f"train.weight_decay: expected >= 0, got {train.weight_decay}")
    if train.warmup_steps < 0 or train.warmup_steps > train.max_steps:
        raise ConfigError(f"train.warmup_steps: expected 0 <= warmup_steps <= train.max_steps "
                          f"({train.max_steps}), got {train.warmup_steps}")
    if not 0.0 <= train.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio: expected a number in [0, 1], got {train.min_lr_ratio}")
    if len(train.betas) != 2 or not all(0.0 <= b < 1.0 for b in train.betas):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1), got {train.betas}")
    if train.num_workers < 0:
        raise ConfigError(f"train.num_workers: expected >= 0, got {train.num_workers}")
    trackers = ("auto", "tensorboard", "wandb", "none")
    for t in train.report_to:
        if t not in trackers:
            raise ConfigError(f"train.report_to: expected a list of {', '.join(trackers)}, got {t!r}")


def resolve_model_section(model_raw: Any) -> dict:
    import transformers

    from . import list_architectures

    archs = list_architectures()
    if not isinstance(model_raw, dict):
        raise ConfigError(f"model: expected a mapping with 'model_type' (one of {', '.join(sorted(archs))}) "
                          f"or 'pretrained' (a checkpoint directory), got {model_raw!r}")
    model_raw = dict(model_raw)
    pretrained = model_raw.pop("pretrained", None)
    model_type = model_raw.pop("model_type", None)
    if pretrained is not None:
        if not isinstance(pretrained, str):
            raise ConfigError(f"model.pretrained: expected a checkpoint directory path, got {pretrained!r}")
        path = resolve_model_dir(pretrained, where="model.pretrained")  # a run's output_dir: its final/
        try:
            saved = transformers.AutoConfig.from_pretrained(str(path))
        except Exception as e:  # unknown model_type, unreadable json
            raise ConfigError(f"model.pretrained: cannot load the config in {str(path)!r}: {e}") from None
        if model_type is not None and model_type != saved.model_type:
            raise ConfigError(f"model.model_type: {model_type!r} does not match the checkpoint's "
                              f"{saved.model_type!r} in {str(path)!r}; leave model_type out when fine-tuning")
        fields = check_model_fields(model_raw, type(saved))
        return {"pretrained": str(path), "model_type": saved.model_type, **fields}
    if model_type is None:
        raise ConfigError(f"model.model_type: missing; expected one of {', '.join(sorted(archs))} "
                          f"(or model.pretrained: PATH)")
    if model_type not in archs:
        raise ConfigError(f"model.model_type: unknown architecture {model_type!r}; "
                          f"known: {', '.join(sorted(archs))}")
    fields = check_model_fields(model_raw, archs[model_type])
    return {"model_type": model_type, **fields}


def model_config_error(error: Exception, fields: typing.Iterable[str] = ()) -> ConfigError:
    """An architecture config's ValueError/TypeError as a ConfigError that names the ``model`` section: the
    config class's own prefix (``DeltaNetConfig: ``) is replaced by ``model.`` when the message starts with one
    of ``fields`` (``model.layers[1].mixer: unknown mixer type ...``), else by ``model: ``."""
    message = str(error)
    owner = re.match(r"(?:[A-Z]\w*Config|make_config\([^)]*\)): (.+)", message, re.S)
    if owner:
        message = owner.group(1)
    first = re.match(r"[A-Za-z_]\w*", message)
    if first and first.group(0) in set(fields):
        return ConfigError(f"model.{message}")
    return ConfigError(f"model: {message}")


def build_model_config(model: dict, task):
    """The model config of a resolved ``model`` section for ``task``: the section's fields over the task's
    defaults (vocab_size, sequence length, the head's num_labels, special tokens), through
    ``seqzoo.make_config`` (or, for ``pretrained``, the checkpoint's config with the fields as overrides), then
    checked against the task. Every check the architecture makes -- the per-layer ``layers`` specs (unknown
    mixer or FFN type, unknown setting, bad value, wrong count) included -- is a :class:`ConfigError` naming
    ``model.FIELD``. :func:`resolve` calls it, so a bad model fails before a run writes anything; the trainer
    builds its model from the config it returns."""
    import transformers

    from . import list_architectures, make_config

    fields = {k: v for k, v in model.items() if k not in MODEL_META_KEYS}
    try:
        if "pretrained" in model:
            config = transformers.AutoConfig.from_pretrained(
                model["pretrained"], **{**task.head_spec.pretrained_overrides(task), **fields})
        else:
            config = make_config(model["model_type"], **{**task.model_config_defaults(), **fields})
    except (ValueError, TypeError) as e:  # the architecture's own checks (ConfigError included)
        arch = list_architectures().get(model.get("model_type"))
        known = set(fields) | (set(config_field_types(arch)) if arch is not None else set())
        raise model_config_error(e, known) from None
    task.check_model_config(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The checked run config of a YAML file (its bases applied, :func:`load_composed`) with ``overrides``;
    ``output_dir`` defaults to :func:`default_output_dir` of the file."""
    raw = apply_overrides(load_composed(path), list(overrides or []))
    if "output_dir" not in raw:
        raw["output_dir"] = default_output_dir(path)
    return resolve(raw)


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
