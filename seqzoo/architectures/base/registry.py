"""Registering an architecture with the Auto classes, and the trust_remote_code shim.

``register_architecture(Config, Model, ForCausalLM, ForSequenceClassification)`` registers the four with
AutoConfig / AutoModel / AutoModelForCausalLM / AutoModelForSequenceClassification (and the byte tokenizer
with AutoTokenizer), refusing a ``model_type`` that transformers already uses.

Checkpoints carry ``auto_map`` entries pointing at ``seqzoo_remote.py``, a three-line module that
``save_pretrained`` writes next to ``config.json``; it imports the classes from the installed seqzoo, so
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` works in a process that never
imported seqzoo.
"""

from __future__ import annotations

import functools
import json
import os

from ...common import ConfigError, atomic_write_text, did_you_mean

ARCHITECTURES: dict[str, type] = {}  # model_type -> config class
_CLASSES: dict[str, dict[str, type]] = {}  # model_type -> {auto class name: class}


def builtin_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def register_architecture(config_class, model_class, causal_lm_class, seq_cls_class) -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from ...tokenizer import ByteTokenizer

    model_type = config_class.model_type
    if model_type in builtin_model_types():
        raise ValueError(f"model_type {model_type!r} collides with a transformers built-in model type; rename it")
    if model_type in ARCHITECTURES:
        if ARCHITECTURES[model_type] is config_class:
            return
        raise ValueError(f"model_type {model_type!r} is already registered by {ARCHITECTURES[model_type]}")
    for cls in (model_class, causal_lm_class, seq_cls_class):
        cls.config_class = config_class
    causal_lm_class.base_model_class = model_class
    seq_cls_class.base_model_class = model_class
    classes = {
        "AutoConfig": config_class,
        "AutoModel": model_class,
        "AutoModelForCausalLM": causal_lm_class,
        "AutoModelForSequenceClassification": seq_cls_class,
    }
    config_class._auto_class_names = {k: v.__name__ for k, v in classes.items()}
    AutoConfig.register(model_type, config_class)
    AutoModel.register(config_class, model_class)
    AutoModelForCausalLM.register(config_class, causal_lm_class)
    AutoModelForSequenceClassification.register(config_class, seq_cls_class)
    try:
        AutoTokenizer.register(config_class, tokenizer_class=ByteTokenizer)
    except TypeError:  # older signature
        AutoTokenizer.register(config_class, slow_tokenizer_class=ByteTokenizer)
    ARCHITECTURES[model_type] = config_class
    _CLASSES[model_type] = classes
    _install_model_type_check()


def check_checkpoint_model_type(path, subfolder: str = "") -> None:
    """A local seqzoo checkpoint (its config.json points ``auto_map`` at ``seqzoo_remote``) whose ``model_type``
    is not a registered seqzoo architecture: raise an error naming the field, the value and the registered
    types. transformers would otherwise ask for ``trust_remote_code`` ("contains custom code") instead."""
    file = os.path.join(os.fspath(path), subfolder or "", "config.json")
    if not os.path.isfile(file):
        return  # a hub id or a folder without config.json: transformers reports it
    try:
        with open(file) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return  # unreadable json: transformers reports it with the file name
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    if not isinstance(auto_map, dict) or not any(
        str(v).startswith(REMOTE_MODULE + ".") for v in auto_map.values() if isinstance(v, str)
    ):
        return
    model_type = data.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"{file}: model_type {model_type!r} is not a registered seqzoo architecture"
            f"{did_you_mean(str(model_type), ARCHITECTURES)}; registered: {', '.join(sorted(ARCHITECTURES))}"
        )


def _install_model_type_check() -> None:
    """Run :func:`check_checkpoint_model_type` at the start of ``AutoConfig.from_pretrained`` (which every
    ``AutoModel*.from_pretrained`` calls), once per process. Everything else is transformers' own code path."""
    from transformers import AutoConfig

    original = AutoConfig.__dict__["from_pretrained"].__func__
    if getattr(original, "_seqzoo_checks_model_type", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_checkpoint_model_type(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
        return original(cls, pretrained_model_name_or_path, *args, **kwargs)

    from_pretrained._seqzoo_checks_model_type = True
    AutoConfig.from_pretrained = classmethod(from_pretrained)


def list_architectures() -> dict[str, type]:
    """``{model_type: config_class}`` for every registered seqzoo architecture."""
    return dict(ARCHITECTURES)


def write_remote_shim(save_directory) -> None:
    """Write ``seqzoo_remote.py`` so that trust_remote_code loading finds the installed seqzoo classes. One shim
    for every checkpoint: it imports the classes of every registered architecture and the tokenizer, so a model
    and a tokenizer saved into the same folder (in any order) write the same file."""
    if not os.path.isdir(save_directory):
        return
    from ...tokenizer import ByteTokenizer

    lines = [
        '"""Written by seqzoo: lets transformers load this checkpoint with trust_remote_code=True when the',
        '`seqzoo` package is installed (pip install seqzoo). The classes are seqzoo\'s own."""',
        "",
        "import seqzoo  # noqa: F401  (registers every seqzoo architecture)",
    ]
    by_module: dict[str, set[str]] = {}
    for classes in _CLASSES.values():
        for cls in classes.values():
            by_module.setdefault(cls.__module__, set()).add(cls.__name__)
    by_module.setdefault(ByteTokenizer.__module__, set()).add(ByteTokenizer.__name__)
    for module in sorted(by_module):
        lines.append(f"from {module} import {', '.join(sorted(by_module[module]))}  # noqa: F401")
    atomic_write_text(os.path.join(save_directory, REMOTE_MODULE + ".py"), "\n".join(lines) + "\n")


REMOTE_MODULE = "seqzoo_remote"


def get_config_class(model_type: str) -> type:
    """The config class of a seqzoo architecture; an unknown name lists the registered ones."""
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"unknown seqzoo model_type {model_type!r}{did_you_mean(str(model_type), ARCHITECTURES)}; "
                          f"available: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def make_config(model_type: str, **fields):
    """``make_config("deltanet", hidden_size=64)``: a config for any registered architecture. Every field is
    checked: an unknown one is an error naming it and the valid fields (with a "did you mean")."""
    config_class = get_config_class(model_type)
    valid = config_class.field_types()
    for key in fields:
        if key not in valid:
            raise ConfigError(f"make_config({model_type!r}): unknown field {key!r}{did_you_mean(key, valid)}; "
                              f"valid fields: {', '.join(sorted(valid))}")
    return config_class(**fields)
