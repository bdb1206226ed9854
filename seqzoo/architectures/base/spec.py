"""Layers as the unit: a layer is a (mixer, FFN) pair, each a registered type with typed settings.

A model config holds one spec per layer (``config.layers``), written in config.json fully resolved::

    [{"mixer": {"type": "deltanet", "num_heads": null, "head_dim": null, "use_short_conv": true, ...},
      "ffn": {"type": "swiglu", "intermediate_size": null}},
     {"mixer": {"type": "attention", "num_kv_heads": 1, ...}, "ffn": {"type": "none"}}]

Users may write an entry in short form: ``"deltanet"`` (a mixer name, default settings, the model's default
FFN), ``{"mixer": "attention"}``, ``{"mixer": {"type": "attention", "num_kv_heads": 1}, "ffn": "none"}``.

Registering a type::

    @dataclass
    class MyMixerSettings(MixerSettings):   # num_heads / head_dim: None = the model's
        conv_size: int = 4                  # every field documented where it is declared

    @register_mixer("my_mixer", settings=MyMixerSettings)
    class MyMixer(nn.Module):
        def __init__(self, config, layer_idx: int, settings: MyMixerSettings): ...

``register_ffn`` works the same way for FFNs (``forward(hidden_states) -> hidden_states``). The block hands a
mixer its settings with ``num_heads`` and ``head_dim`` resolved (never ``None``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...common import ConfigError, did_you_mean
from ...fields import check_type, dataclass_types

# --------------------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LayerSettings:
    """Base of every mixer's and FFN's settings: a dataclass of typed fields with defaults."""

    @classmethod
    def parse(cls, values: dict, where: str, kind: str, type_name: str) -> "LayerSettings":
        """Build from a mapping, checking every key and type; ``where`` names the place in errors."""
        types_ = dataclass_types(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in types_:
                raise ConfigError(
                    f"{where}: unknown setting {key!r} for {kind} {type_name!r}{did_you_mean(key, types_)}; "
                    f"valid settings: {', '.join(sorted(types_)) or '(none)'}"
                )
            kwargs[key] = check_type(f"{where}.{key}", value, types_[key])
        settings = cls(**kwargs)
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:
        """Value checks beyond the types; subclasses extend it and raise through :meth:`invalid`."""

    def invalid(self, where: str, field: str, expected: str) -> ConfigError:
        return ConfigError(f"{where}.{field}: expected {expected}, got {getattr(self, field)!r}")

    def require_positive(self, where: str, *fields: str) -> None:
        for f in fields:
            value = getattr(self, f)
            if value is not None and value <= 0:
                raise self.invalid(where, f, "a positive number")

    def require_choice(self, where: str, field: str, choices) -> None:
        if getattr(self, field) not in choices:
            raise self.invalid(where, field, "one of " + ", ".join(repr(c) for c in choices))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class MixerSettings(LayerSettings):
    """Settings every mixer has: its head layout. ``None`` means the model's (``config.num_heads`` /
    ``config.head_dim``, which defaults to ``hidden_size // num_heads``)."""

    num_heads: int | None = None  # heads of this layer; None: the model's num_heads
    head_dim: int | None = None  # size of each head; None: the model's head_dim

    def validate(self, where: str) -> None:
        self.require_positive(where, "num_heads", "head_dim")


@dataclass
class FFNSettings(LayerSettings):
    """Base of FFN settings (the "none" FFN has no fields)."""


# --------------------------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerType:
    kind: str  # "mixer" or "ffn"
    name: str
    cls: type | None  # None only for the "none" FFN
    settings: type


MIXERS: dict[str, LayerType] = {}
FFNS: dict[str, LayerType] = {}
NO_FFN = "none"


def _register(table: dict, kind: str, name: str, settings: type, base: type):
    if not (isinstance(settings, type) and issubclass(settings, base) and dataclasses.is_dataclass(settings)):
        raise TypeError(f"register_{kind}({name!r}): settings must be a dataclass subclassing {base.__name__}, "
                        f"got {settings!r}")

    def wrap(cls):
        old = table.get(name)
        if old is not None and old.cls is not cls:
            raise ValueError(f"{kind} {name!r} is already registered by {old.cls.__module__}.{old.cls.__name__}")
        table[name] = LayerType(kind, name, cls, settings)
        if cls is not None:
            cls.layer_type_name = name
            cls.settings_class = settings
        return cls

    return wrap


def register_mixer(name: str, settings: type = MixerSettings):
    """Class decorator: register a mixer type under ``name`` with its settings dataclass."""
    return _register(MIXERS, "mixer", name, settings, MixerSettings)


def register_ffn(name: str, settings: type = FFNSettings):
    """Class decorator: register an FFN type under ``name`` with its settings dataclass."""
    return _register(FFNS, "ffn", name, settings, FFNSettings)


_register(FFNS, "ffn", NO_FFN, FFNSettings, FFNSettings)(None)  # "none": the block has no FFN


def get_layer_type(kind: str, name: Any, where: str) -> LayerType:
    table = MIXERS if kind == "mixer" else FFNS
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"{where}: unknown {kind} type {name!r}{did_you_mean(str(name), table)}; "
                          f"registered {kind} types: {', '.join(sorted(table))}")
    return table[name]


def get_mixer(name: str) -> type:
    """The class of a registered mixer."""
    return get_layer_type("mixer", name, "mixer").cls


# --------------------------------------------------------------------------------------------------------------
# per-layer specs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LayerSpec:
    mixer_type: str
    mixer: MixerSettings
    ffn_type: str
    ffn: FFNSettings

    def to_dict(self) -> dict:
        return {"mixer": {"type": self.mixer_type, **self.mixer.to_dict()},
                "ffn": {"type": self.ffn_type, **self.ffn.to_dict()}}


def _split_type(entry: Any, where: str, kind: str) -> tuple[str, dict]:
    """``"name"`` or ``{"type": "name", **settings}`` -> (name, settings)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict):
        if "type" not in entry:
            raise ConfigError(f"{where}: a {kind} given as a mapping needs a 'type' (registered: "
                              f"{', '.join(sorted(MIXERS if kind == 'mixer' else FFNS))}), got {entry!r}")
        rest = dict(entry)
        return rest.pop("type"), rest
    raise ConfigError(f"{where}: expected a {kind} type name or a mapping with 'type' and settings, got {entry!r}")


def parse_layer(entry: Any, index: int, *, owner: str, default_ffn: str,
                defaults: dict[str, dict] | None = None) -> LayerSpec:
    """One entry of ``layers`` -> :class:`LayerSpec`. ``defaults`` maps a mixer/FFN type to setting values that
    apply where the entry does not set them (an architecture forwards its top-level fields this way)."""
    defaults = defaults or {}
    where = f"{owner}: layers[{index}]"
    if isinstance(entry, str):
        entry = {"mixer": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mixer name or a mapping with 'mixer' (and optionally 'ffn'), "
                          f"got {entry!r}")
    unknown = set(entry) - {"mixer", "ffn"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, ['mixer', 'ffn'])}; "
                          f"a layer has 'mixer' and 'ffn'")
    if "mixer" not in entry:
        raise ConfigError(f"{where}: missing 'mixer' (registered mixer types: {', '.join(sorted(MIXERS))})")
    out = []
    for kind, raw in (("mixer", entry["mixer"]), ("ffn", entry.get("ffn", default_ffn))):
        name, values = _split_type(raw, f"{where}.{kind}", kind)
        layer_type = get_layer_type(kind, name, f"{where}.{kind}")
        values = {**defaults.get(name, {}), **values}
        out.append((name, layer_type.settings.parse(values, f"{where}.{kind} ({name})", kind, name)))
    (mixer_type, mixer), (ffn_type, ffn) = out
    return LayerSpec(mixer_type, mixer, ffn_type, ffn)


def parse_layers(entries: Any, *, num_layers: int, owner: str, default_ffn: str,
                 defaults: dict[str, dict] | None = None) -> list[LayerSpec]:
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{owner}: layers must be a list with one entry per layer, got {entries!r}")
    if len(entries) != num_layers:
        raise ConfigError(f"{owner}: layers has {len(entries)} entries but num_hidden_layers is {num_layers}; "
                          f"give one entry per layer")
    return [parse_layer(e, i, owner=owner, default_ffn=default_ffn, defaults=defaults) for i, e in enumerate(entries)]
