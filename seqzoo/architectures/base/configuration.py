"""ZooConfig: the fields every seqzoo architecture shares, and the per-layer list of (mixer, FFN) specs.

A model is a stack of layers; each layer is a mixer and an FFN, both registered types with typed settings
(``spec.py``). ``config.layers`` holds one resolved spec per layer and is what config.json stores. It is built
from, in order of precedence:

1. ``layers=[...]``: one entry per layer, ``"deltanet"`` or ``{"mixer": {"type": "attention", "num_kv_heads": 1},
   "ffn": "none"}`` (a string is the type with its defaults; a dict is ``type`` plus settings);
2. ``mixer_pattern=[names]``: shorthand for ``layers`` with one mixer name per layer;
3. the architecture's preset, :meth:`default_layers` (every layer ``default_mixer`` unless it says otherwise).

The FFN of a layer that does not name one is ``mlp_type`` (``"swiglu"``, ``"geglu"``, ``"glu"``, ``"mlp"``, ...,
or ``"none"`` for no FFN). An architecture is a preset: a subclass with ``model_type``, ``default_mixer`` and
its own convenient fields, which it forwards with :meth:`forward_settings` to the settings of its mixer
types (one source of truth: they are not stored again on the config; the resolved ``layers`` hold them).
Shared sizes stay here (``hidden_size``, ``num_heads``, ``head_dim``, ``norm_eps``, vocabulary, ...); a
layer's settings may override ``num_heads``/``head_dim`` for that layer.

Every typed field of ``__init__`` is type-checked; a wrong value names the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing

from transformers import PreTrainedConfig

from ...common import ConfigError, did_you_mean
from ...fields import check_type, dataclass_types
from .spec import FFNS, MIXERS, LayerSpec, get_layer_type, parse_layers

POOLINGS = ("mean", "last", "cls")

# keyword arguments of transformers' PreTrainedConfig that a user may set through make_config / YAML
HF_CONFIG_KWARGS = ("num_labels", "id2label", "label2id", "problem_type", "dtype", "torch_dtype",
                    "output_hidden_states", "return_dict")


class ZooConfig(PreTrainedConfig):
    model_type = "seqzoo"  # overridden by every architecture; not registered itself
    default_mixer = "attention"  # mixer of every layer of the default preset
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 259,  # the byte tokenizer's 256 bytes + pad/bos/eos
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_heads: int = 4,
        head_dim: int | None = None,  # None: hidden_size // num_heads
        intermediate_size: int | None = None,  # FFN width; None: 8/3 * hidden for gated FFNs (4x otherwise),
                                               # rounded up to a multiple of 32. An FFN's settings may override it.
        mlp_type: str = "swiglu",  # the FFN of every layer that does not name one (a registered FFN or "none")
        norm_eps: float = 1e-6,
        max_position_embeddings: int = 2048,  # only a default for rotary tables; T is not capped by it
        initializer_range: float = 0.02,
        layers: list | None = None,  # one (mixer, FFN) spec per layer; see the module docstring
        mixer_pattern: list[str] | None = None,  # shorthand for layers: one mixer name per layer
        classifier_pooling: str = "mean",  # sequence classification: "mean" over non-pad tokens, "last", or
                                           # "cls" (a learned token in front; use with bidirectional)
        bidirectional: bool = False,  # every mixer also runs on the reversed sequence (an encoder; no cache)
        classifier_dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = 256,
        bos_token_id: int | None = 257,
        eos_token_id: int | None = 258,
        use_cache: bool = True,
        **kwargs,
    ):
        forwarded = self.__dict__.pop("_forwarded_settings", {})  # from forward_settings() in a subclass
        given_type = kwargs.pop("model_type", None)  # config.json carries it; it must name this class
        if given_type is not None and given_type != type(self).model_type:
            from .registry import ARCHITECTURES

            raise ConfigError(
                f"model_type: {given_type!r} is not {type(self).__name__}'s {type(self).model_type!r}"
                f"{did_you_mean(str(given_type), ARCHITECTURES)}; registered seqzoo model types: "
                f"{', '.join(sorted(ARCHITECTURES))}"
            )
        values = dict(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
            num_heads=num_heads, head_dim=head_dim, intermediate_size=intermediate_size, mlp_type=mlp_type,
            norm_eps=norm_eps, max_position_embeddings=max_position_embeddings,
            initializer_range=initializer_range, classifier_pooling=classifier_pooling, bidirectional=bidirectional,
            classifier_dropout=classifier_dropout, use_cache=use_cache,
        )
        hints = _init_hints(ZooConfig)
        for key, value in values.items():
            setattr(self, key, check_type(f"{type(self).__name__}.{key}", value, hints[key]))
        passed = dict(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                      tie_word_embeddings=tie_word_embeddings)  # transformers' fields, checked here too
        passed = {k: check_type(f"{type(self).__name__}.{k}", v, hints[k]) for k, v in passed.items()}
        tie_word_embeddings = passed["tie_word_embeddings"]
        kwargs.setdefault("auto_map", self._default_auto_map())
        super().__init__(**passed, **kwargs)
        self.tie_word_embeddings = tie_word_embeddings
        self.validate_zoo()
        specs = self._build_layers(layers, mixer_pattern, forwarded)
        self.layers = [spec.to_dict() for spec in specs]

    # ------------------------------------------------------------------------------------------
    # presets
    def forward_settings(self, layer_type: str, values: dict | None = None, field_names: dict | None = None,
                         **more) -> None:
        """Called by an architecture's ``__init__`` before ``super().__init__``: ``values`` (setting name ->
        value) become the defaults of the settings of every layer of ``layer_type`` (a mixer or FFN name) that
        does not set them. ``field_names`` maps a setting to the config field it came from where the names
        differ (``{"activation": "diag_activation"}``), so that errors name what the user wrote. Settings may
        also be given as keyword arguments."""
        kind = "mixer" if layer_type in MIXERS else "ffn"
        settings_cls = get_layer_type(kind, layer_type, type(self).__name__).settings
        types_ = dataclass_types(settings_cls)
        field_names = field_names or {}
        checked = {}
        for key, value in {**(values or {}), **more}.items():
            if key not in types_:  # a bug in the architecture, not user input
                raise TypeError(f"{type(self).__name__}.forward_settings: {layer_type} has no setting {key!r}")
            checked[key] = check_type(f"{type(self).__name__}.{field_names.get(key, key)}", value, types_[key])
        table = self.__dict__.setdefault("_forwarded_settings", {})
        table.setdefault(layer_type, {}).update(checked)

    def default_layers(self) -> list:
        """The preset's layer list (names or dicts); architectures override it (e.g. TransNormer)."""
        return [self.default_mixer] * self.num_hidden_layers

    def _build_layers(self, layers, mixer_pattern, forwarded) -> list[LayerSpec]:
        owner = type(self).__name__
        if layers is not None and mixer_pattern is not None:
            raise ConfigError(f"{owner}: give layers or mixer_pattern (a shorthand for layers), not both")
        if mixer_pattern is not None:
            mixer_pattern = check_type(f"{owner}.mixer_pattern", mixer_pattern, list[str])
            if len(mixer_pattern) != self.num_hidden_layers:
                raise ConfigError(
                    f"{owner}: mixer_pattern has {len(mixer_pattern)} entries but num_hidden_layers is "
                    f"{self.num_hidden_layers}; give one mixer name per layer"
                )
            entries = list(mixer_pattern)
        elif layers is not None:
            entries = layers
        else:
            entries = self.default_layers()
        specs = parse_layers(entries, num_layers=self.num_hidden_layers, owner=owner, default_ffn=self.mlp_type,
                             defaults=forwarded)
        for i, spec in enumerate(specs):  # check every layer with its resolved head layout now, not at build
            heads, dim = self.resolve_heads(spec, i)
            resolved = dataclasses.replace(spec.mixer, num_heads=heads, head_dim=dim)
            resolved.validate(f"{owner}: layers[{i}].mixer ({spec.mixer_type})")
        return specs

    # ------------------------------------------------------------------------------------------
    def validate_zoo(self) -> None:
        """Checks with messages that name the field; architectures extend this for their own fields."""
        name = type(self).__name__
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{name}.{field}: must be positive, got {getattr(self, field)}")
        if self.head_dim is None and self.hidden_size % self.num_heads != 0:
            raise ConfigError(
                f"{name}: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}) "
                "unless head_dim is given"
            )
        if self.mlp_type not in FFNS:
            raise ConfigError(f"{name}.mlp_type: unknown FFN type {self.mlp_type!r}"
                              f"{did_you_mean(self.mlp_type, FFNS)}; registered FFN types: {', '.join(sorted(FFNS))}")
        if self.classifier_pooling not in POOLINGS:
            raise ConfigError(f"{name}.classifier_pooling: expected one of {POOLINGS}, got {self.classifier_pooling!r}")
        for token in ("pad_token_id", "bos_token_id", "eos_token_id"):
            tid = getattr(self, token, None)
            if isinstance(tid, int) and not 0 <= tid < self.vocab_size:
                raise ConfigError(f"{name}.{token}: {tid} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    def default_intermediate_size(self, ffn_type: str) -> int:
        """The FFN width when neither the FFN's settings nor ``intermediate_size`` give one."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        ratio = 4 if ffn_type == "mlp" else 8 / 3
        return 32 * ((int(self.hidden_size * ratio) + 31) // 32)

    def layer_specs(self) -> list[LayerSpec]:
        """The parsed spec of every layer (from the resolved ``layers``)."""
        return parse_layers(self.layers, num_layers=self.num_hidden_layers, owner=type(self).__name__,
                            default_ffn=self.mlp_type)

    def layer_mixers(self) -> list[str]:
        """The mixer type of every layer."""
        return [entry["mixer"]["type"] for entry in self.layers]

    def resolve_heads(self, spec: LayerSpec, index: int) -> tuple[int, int]:
        """(num_heads, head_dim) of a layer: its settings, else the model's."""
        heads = spec.mixer.num_heads or self.num_heads
        if spec.mixer.head_dim is not None:
            dim = spec.mixer.head_dim
        elif self.head_dim is not None:
            dim = self.head_dim
        else:
            if self.hidden_size % heads:
                raise ConfigError(
                    f"{type(self).__name__}: layers[{index}].mixer ({spec.mixer_type}): hidden_size "
                    f"({self.hidden_size}) must be divisible by num_heads ({heads}) unless head_dim is given"
                )
            dim = self.hidden_size // heads
        return heads, dim

    def check_field(self, name: str, value):
        """``value`` checked against the annotation of ``name`` in this class's ``__init__`` (for an
        architecture's own fields that are not forwarded to a layer type)."""
        return check_type(f"{type(self).__name__}.{name}", value, type(self).field_types()[name])

    @classmethod
    def field_types(cls) -> dict[str, typing.Any]:
        """Every field ``__init__`` accepts (this class and its bases up to transformers'), with its type."""
        out: dict[str, typing.Any] = {}
        for klass in cls.__mro__:
            if klass is PreTrainedConfig or not (isinstance(klass, type) and issubclass(klass, PreTrainedConfig)):
                break
            if "__init__" not in klass.__dict__:
                continue
            hints = _init_hints(klass)
            for name, param in inspect.signature(klass.__dict__["__init__"]).parameters.items():
                if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in out:
                    continue
                out[name] = hints.get(name, typing.Any)
        for name in HF_CONFIG_KWARGS:
            out.setdefault(name, typing.Any)
        return out

    def to_diff_dict(self) -> dict:
        out = super().to_diff_dict()
        out["layers"] = self.layers  # always the full per-layer list, even when it equals a default
        return out

    # ------------------------------------------------------------------------------------------
    # trust_remote_code support: checkpoints carry auto_map entries that point at a tiny shim module
    # (written next to config.json by save_pretrained) which imports the classes from the installed seqzoo.
    REMOTE_MODULE = "seqzoo_remote"  # registry.REMOTE_MODULE

    @classmethod
    def _arch_class_names(cls) -> dict[str, str]:
        return getattr(cls, "_auto_class_names", {})

    @classmethod
    def _default_auto_map(cls) -> dict[str, str]:
        return {auto: f"{cls.REMOTE_MODULE}.{name}" for auto, name in cls._arch_class_names().items()}

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """No-op: seqzoo writes its own ``auto_map`` and ``seqzoo_remote.py`` shim. transformers calls this after
        a ``trust_remote_code`` load, and would then try to copy this class's source file on the next save."""

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        from ...common import staged_directory
        from .registry import write_remote_shim

        if push_to_hub:
            super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
            write_remote_shim(save_directory)
            return
        with staged_directory(save_directory) as folder:
            super().save_pretrained(folder, **kwargs)
            write_remote_shim(folder)


@functools.lru_cache(maxsize=None)
def _init_hints(klass: type) -> dict:
    try:
        return typing.get_type_hints(klass.__dict__["__init__"])
    except Exception:  # pragma: no cover - unresolvable annotation: no type checks for that class
        return {}
