"""Layers as the unit: per-layer (mixer, FFN) specs, hybrids of every pair of registered mixers, errors that
name the place, config.json round trips, and the shared padding helper."""

import itertools
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import seqzoo
from seqzoo.architectures.base import FFNS, MIXERS, padding
from seqzoo.common import ConfigError

from . import common

V = 259
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V)
# each mixer's default settings must work at this size; the short blocks make block mixers cross boundaries
SMALL_SETTINGS = {"diag_attention": {"block_size": 4}}


def _mixer(name):
    return {"type": name, **SMALL_SETTINGS.get(name, {})}


PAIRS = list(itertools.combinations(sorted(MIXERS), 2))


def test_every_registered_mixer_is_in_the_pairs():
    assert {"attention", "deltanet", "norm_attention", "diag_attention"} <= set(MIXERS)
    assert {m for pair in PAIRS for m in pair} == set(MIXERS)


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_hybrid_of_every_pair(first, second, tmp_path):
    """Builds, trains one step, decodes from the cache (= full forward), round-trips through save/load."""
    torch.manual_seed(0)
    layers = [{"mixer": _mixer(first)}, {"mixer": _mixer(second), "ffn": "none"}]
    model = common.tiny_lm("transformer", **TINY, layers=layers)
    assert [type(b.mixer) for b in model.model.layers] == [MIXERS[first].cls, MIXERS[second].cls]
    assert model.model.layers[1].ffn is None
    common.check_forward_backward(model, V)
    common.check_cached_decoding(model, V, prefix=5, steps=4)
    loaded = common.check_save_load(model, V, tmp_path / "ckpt", remote_code=False)
    assert loaded.config.layers == model.config.layers


def test_layers_resolved_in_config_json_and_loaded_back(tmp_path):
    cfg = seqzoo.make_config(
        "deltanet", **TINY, use_short_conv=False,
        layers=["deltanet", {"mixer": {"type": "attention", "num_kv_heads": 1}, "ffn": "none"}],
    )
    assert cfg.layers[0] == {
        "mixer": {"type": "deltanet", "num_heads": None, "head_dim": None, "use_short_conv": False, "conv_size": 4,
                  "allow_neg_eigval": False, "use_output_gate": True, "gate_bias_init": 1.28, "kernel_backend": "auto",
                  "recurrent_max_len": 64},
        "ffn": {"type": "swiglu", "intermediate_size": None},
    }
    assert cfg.layers[1]["mixer"]["num_kv_heads"] == 1 and cfg.layers[1]["ffn"] == {"type": "none"}
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["layers"] == cfg.layers
    # the architecture's forwarded fields live in the layers only: one source of truth
    assert "use_short_conv" not in saved and "num_kv_heads" not in saved and "mixer_pattern" not in saved
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.layers == cfg.layers and loaded.layer_mixers() == ["deltanet", "attention"]
    # the default preset's layers are written too
    plain = seqzoo.make_config("deltanet", **TINY)
    plain.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["layers"] == plain.layers


def test_forwarded_fields_are_defaults_of_their_mixer_only():
    cfg = seqzoo.make_config("deltanet", **TINY, conv_size=2, layers=[
        "deltanet", {"mixer": {"type": "deltanet", "conv_size": 3}}])
    assert [e["mixer"]["conv_size"] for e in cfg.layers] == [2, 3]  # an explicit layer setting wins
    tn = seqzoo.make_config("transnormer", **TINY, block_size=8, feature_map="elu")
    assert tn.layers[0]["mixer"]["block_size"] == 8 and tn.layers[1]["mixer"]["feature_map"] == "elu"


def test_per_layer_head_layout_and_no_ffn():
    model = common.tiny_lm("transformer", **TINY, layers=[
        {"mixer": {"type": "attention", "num_heads": 4, "head_dim": 8}, "ffn": {"type": "mlp", "intermediate_size": 40}},
        {"mixer": "attention", "ffn": "none"},
    ])
    first, second = model.model.layers
    assert first.mixer.num_heads == 4 and first.mixer.head_dim == 8 and first.ffn.up_proj.out_features == 40
    assert second.mixer.num_heads == 2 and second.mixer.head_dim == 16 and second.ffn is None
    assert not any(name.startswith("model.layers.1.ffn") for name, _ in model.named_parameters())
    common.check_cached_decoding(model, V)


def test_mixer_pattern_is_shorthand_for_layers():
    a = seqzoo.make_config("deltanet", **TINY, mixer_pattern=["attention", "deltanet"])
    b = seqzoo.make_config("deltanet", **TINY, layers=["attention", {"mixer": "deltanet"}])
    assert a.layers == b.layers


@pytest.mark.parametrize("fields,message", [
    (dict(layers=[{"mixer": "deltanett"}, "deltanet"]),
     r"DeltaNetConfig: layers\[0\]\.mixer: unknown mixer type 'deltanett' \(did you mean 'deltanet'\?\); "
     r"registered mixer types: .*attention"),
    (dict(layers=["deltanet", {"mixer": {"type": "attention", "num_kv_head": 1}}]),
     r"layers\[1\]\.mixer \(attention\): unknown setting 'num_kv_head' for mixer 'attention' "
     r"\(did you mean 'num_kv_heads'\?\); valid settings: dropout, head_dim, num_heads, num_kv_heads, rope_theta"),
    (dict(layers=[{"mixer": {"type": "deltanet", "conv_size": 0}}, "deltanet"]),
     r"layers\[0\]\.mixer \(deltanet\)\.conv_size: expected a positive number, got 0"),
    (dict(layers=[{"mixer": {"type": "deltanet", "use_short_conv": "yes"}}, "deltanet"]),
     r"layers\[0\]\.mixer \(deltanet\)\.use_short_conv: expected bool, got 'yes'"),
    (dict(layers=["deltanet", {"mixer": "deltanet", "ffn": "swiglue"}]),
     r"layers\[1\]\.ffn: unknown ffn type 'swiglue' \(did you mean 'swiglu'\?\)"),
    (dict(layers=["deltanet", {"mixer": "deltanet", "fnn": "none"}]),
     r"layers\[1\]: unknown key 'fnn' \(did you mean 'ffn'\?\)"),
    (dict(layers=[{"mixer": {"num_heads": 2}}, "deltanet"]), r"layers\[0\]\.mixer: a mixer given as a mapping needs a 'type'"),
    (dict(layers=["deltanet"]), r"layers has 1 entries but num_hidden_layers is 2"),
    (dict(layers=["deltanet", "deltanet"], mixer_pattern=["deltanet", "deltanet"]), r"not both"),
    (dict(layers=["deltanet", {"mixer": {"type": "attention", "num_kv_heads": 3}}]),
     r"layers\[1\]\.mixer \(attention\)\.num_kv_heads: expected a divisor of num_heads \(2\), got 3"),
    (dict(layers=["deltanet", {"mixer": {"type": "attention", "num_heads": 3}}]),
     r"layers\[1\]\.mixer \(attention\): hidden_size \(32\) must be divisible by num_heads \(3\)"),
    (dict(no_such_field=3), r"make_config\('deltanet'\): unknown field 'no_such_field'; valid fields: .*hidden_size"),
    (dict(num_kv_heads=1), r"unknown field 'num_kv_heads'"),  # an attention setting, not DeltaNet's
    (dict(vocab_size="abc"), r"DeltaNetConfig\.vocab_size: expected int, got 'abc'"),
    (dict(conv_size="4"), r"DeltaNetConfig\.conv_size: expected int, got '4'"),
    (dict(mlp_type="swiglue"), r"DeltaNetConfig\.mlp_type: unknown FFN type 'swiglue' \(did you mean 'swiglu'\?\)"),
])
def test_errors_name_the_layer_type_and_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        seqzoo.make_config("deltanet", **{**TINY, **fields})


def test_make_config_unknown_model_type_suggests():
    with pytest.raises(ValueError, match=r"unknown seqzoo model_type 'deltanett' \(did you mean 'deltanet'\?\)"):
        seqzoo.make_config("deltanett")


def test_no_architecture_config_takes_another_architectures_mixer_fields():
    own = {"transformer": {"attention"}, "deltanet": {"deltanet"}, "transnormer": {"norm_attention", "diag_attention"}}
    for model_type, cls in seqzoo.list_architectures().items():
        mine = own.get(model_type, {cls.default_mixer})
        fields = set(cls.field_types())
        for name, layer_type in MIXERS.items():
            if name in mine:
                continue
            others = set(layer_type.settings.__dataclass_fields__) - {"num_heads", "head_dim"}
            # a field named like another mixer's setting is only fine if this architecture's own mixer has it
            own_settings = set().union(*(MIXERS[m].settings.__dataclass_fields__ for m in mine))
            leaked = (fields & others) - own_settings
            assert not leaked, f"{cls.__name__} accepts {sorted(leaked)}, settings of the {name} mixer"
    assert "num_kv_heads" not in seqzoo.get_config_class("deltanet").field_types()


def test_registries_name_their_types():
    assert {"swiglu", "geglu", "glu", "mlp", "none"} <= set(FFNS)
    with pytest.raises(TypeError, match="settings must be a dataclass subclassing MixerSettings"):
        seqzoo.architectures.base.register_mixer("bad", settings=dict)


@pytest.mark.parametrize("rows", [[[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]]])
def test_padding_pack_unpack(rows):
    mask = torch.tensor(rows)
    x = torch.randn(4, 5, 3, 2)
    p = padding.pack(mask)
    assert p.cu_seqlens.tolist() == [0, 3, 6, 6, 9] and p.cu_seqlens.dtype == torch.int32
    packed = p.pack(x)
    assert packed.shape == (1, 9, 3, 2)
    assert torch.equal(packed[0, 3:6], x[1, 2:5]) and torch.equal(packed[0, 6:], x[3, [0, 2, 4]])
    back = p.unpack(packed)
    assert torch.equal(back, x * mask[..., None, None])
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, T\]"):
        padding.pack(torch.ones(2, 3, 4))


def test_causal_lm_loads_from_hybrid_checkpoint_through_auto(tmp_path):
    model = common.tiny_lm("transnormer", **TINY, block_size=4, layers=["norm_attention", "deltanet"])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.layer_mixers() == ["norm_attention", "deltanet"]


@pytest.mark.parametrize("model_type,fields", [("deltanet", {}), ("transnormer", {"use_output_gate": True})])
def test_output_gates_start_open_at_every_width(model_type, fields):
    """silu(W_g x + b) with b = 1.28 at init: the gate is ~1 whatever the width, so it does not scale the
    mixer's output (and gradient) down at small widths; a loaded checkpoint keeps its trained bias."""
    from seqzoo.architectures.base import GATE_BIAS_INIT, GateProjection

    for width in (32, 256):
        model = common.tiny_lm(model_type, **{**TINY, "hidden_size": width}, **fields)
        gates = [m for m in model.modules() if isinstance(m, GateProjection)]
        assert gates
        x = model.model.layers[-1].mixer_norm(torch.randn(4, 7, width))
        for g in gates:
            assert torch.equal(g.bias, torch.full_like(g.bias, GATE_BIAS_INIT))
            opened = torch.nn.functional.silu(g(x))
            assert 0.85 < opened.mean().item() < 1.15, (width, opened.mean().item())


def test_trained_gate_bias_survives_save_load(tmp_path):
    model = common.tiny_lm("deltanet", **TINY)
    gate = model.model.layers[0].mixer.g_proj
    with torch.no_grad():
        gate.bias.fill_(-0.5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.layers[0].mixer.g_proj.bias, gate.bias)
