"""TransNormer on tiny configs, through the shared architecture checks, plus its own pieces (presets, layer
layout, decay, gate, ReLA blocks, bidirectional classification)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo
from seqzoo.architectures.transnormer import (
    DiagAttention,
    NormAttention,
    TransNormerConfig,
    TransNormerForCausalLM,
)
from seqzoo.architectures.transnormer.modeling_transnormer import decay_rates

from . import common

V = 259
# block_size 4 so that the short test sequences cross several block boundaries
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V, block_size=4)
VARIANTS = {
    "t2": dict(feature_map="1+elu", diag_activation="softmax"),
    "t1+decay+gate": dict(feature_map="elu", diag_activation="relu", use_decay=True, use_output_gate=True),
}


@pytest.fixture(params=list(VARIANTS))
def model(request):
    return common.tiny_lm("transnormer", **TINY, **VARIANTS[request.param])


def test_layer_layout_diag_first_half():
    cfg = seqzoo.make_config("transnormer", **{**TINY, "num_hidden_layers": 4})
    assert cfg.layer_mixers() == ["diag_attention", "diag_attention", "norm_attention", "norm_attention"]
    m = AutoModelForCausalLM.from_config(cfg)
    assert [type(b.mixer) for b in m.model.layers] == [DiagAttention, DiagAttention, NormAttention, NormAttention]
    assert seqzoo.make_config("transnormer", num_diag_layers=1, **{**TINY, "num_hidden_layers": 4}).layer_mixers() \
        == ["diag_attention"] + ["norm_attention"] * 3
    pattern = ["norm_attention", "diag_attention"]
    assert seqzoo.make_config("transnormer", mixer_pattern=pattern, **TINY).layer_mixers() == pattern
    # the base model reports the recurrent state: S of the Norm layer + one block of k, v of the Diag layer
    assert m.model.state_size() == 2 * (2 * 16 * 16) + 2 * (2 * 4 * 2 * 16)


def test_presets():
    t1, t2 = TransNormerConfig.from_preset("t1"), TransNormerConfig.from_preset("t2", hidden_size=64)
    diag1, norm1 = t1.layers[0], t1.layers[-1]
    assert (norm1["mixer"]["feature_map"], diag1["mixer"]["activation"], diag1["mixer"]["block_size"]) == ("elu", "relu", 64)
    assert diag1["ffn"]["type"] == norm1["ffn"]["type"] == "glu"
    assert (t2.layers[-1]["mixer"]["feature_map"], t2.layers[0]["mixer"]["activation"], t2.hidden_size) == \
        ("1+elu", "softmax", 64)
    assert t1.layer_mixers() == ["diag_attention"] * 6 + ["norm_attention"] * 6
    with pytest.raises(ValueError, match="preset must be one of"):
        TransNormerConfig.from_preset("t3")


def test_forward_backward(model):
    common.check_forward_backward(model, V, T=13)


def test_cached_decoding_equals_full_forward(model):
    common.check_cached_decoding(model, V, prefix=5, steps=7)
    common.check_chunked_prefill(model, V)


def test_generate_equals_argmax_loop(model):
    common.check_generate_greedy(model, V)


def test_generate_with_left_padding_matches_unpadded():
    common.check_generate_left_padded(common.tiny_lm("transnormer", use_decay=True, **TINY), long=7, short=5, new=6)


def test_save_load_round_trip(tmp_path):
    model = common.tiny_lm("transnormer", **TINY, **VARIANTS["t1+decay+gate"])
    loaded = common.check_save_load(model, V, tmp_path / "ckpt")
    norm = [e["mixer"] for e in loaded.config.layers if e["mixer"]["type"] == "norm_attention"][0]
    diag = [e["mixer"] for e in loaded.config.layers if e["mixer"]["type"] == "diag_attention"][0]
    assert norm["use_decay"] and norm["feature_map"] == "elu" and diag["block_size"] == 4
    assert loaded.config.layers == model.config.layers


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_padded_equals_unpadded(pooling, side):
    common.check_classification_padding("transnormer", V, pooling, side, use_decay=True, **TINY)


def test_bidirectional_classification():
    """causal=False: every token sees the whole sequence (its block, the full linear-attention state);
    padding still does not change the result, and a later token changes an earlier token's features."""
    common.check_classification_padding("transnormer", V, "mean", "right", causal=False, **TINY)
    cfg = seqzoo.make_config("transnormer", causal=False, num_labels=2, **TINY)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    x = torch.randint(0, 256, (1, 9))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 256
    with torch.no_grad():
        hx = model.model(x).last_hidden_state
        hy = model.model(y).last_hidden_state
    assert not torch.allclose(hx[0, 0], hy[0, 0])
    lm = AutoModelForCausalLM.from_config(seqzoo.make_config("transnormer", causal=False, **TINY))
    with pytest.raises(ValueError, match="causal=False"):
        lm(x, use_cache=True)


def test_packed_sequences_equal_separate(model):
    common.check_packed_equals_separate(model, V, lengths=(5, 1, 9))


def test_decay_rates():
    d = decay_rates(4, 0, 3)
    assert d.shape == (4,) and bool((d < 0).all()) and bool((d[1:] > d[:-1]).all())  # later heads decay less
    assert bool((decay_rates(4, 2, 3).abs() < 1e-4).all())  # the last layer barely decays


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"layers\[1\]\.mixer \(norm_attention\)\.feature_map: expected one of"):
        seqzoo.make_config("transnormer", feature_map="relu", **TINY)
    with pytest.raises(ValueError, match=r"layers\[0\]\.mixer \(diag_attention\)\.activation: expected one of"):
        seqzoo.make_config("transnormer", diag_activation="gelu", **TINY)
    with pytest.raises(ValueError, match=r"block_size: expected a positive number, got 0"):
        seqzoo.make_config("transnormer", **{**TINY, "block_size": 0})
    with pytest.raises(ValueError, match="num_diag_layers: must be in"):
        seqzoo.make_config("transnormer", num_diag_layers=3, **TINY)


def test_registered_with_auto_classes():
    assert seqzoo.list_architectures()["transnormer"] is TransNormerConfig
    m = AutoModelForCausalLM.from_config(seqzoo.make_config("transnormer", **TINY))
    assert isinstance(m, TransNormerForCausalLM)
    assert m.config.auto_map["AutoModelForCausalLM"] == "seqzoo_remote.TransNormerForCausalLM"
