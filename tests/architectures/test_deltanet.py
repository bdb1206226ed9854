"""DeltaNet on a tiny config: the shared architecture checks, its variants (no conv, negative eigenvalues, no
gate), a hybrid with softmax attention, and the kernel backends agreeing inside the model."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo
from seqzoo.architectures.deltanet import DeltaNetConfig, DeltaNetForCausalLM, DeltaNetMixer

from . import common

V = 259
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V)


@pytest.fixture
def model():
    return common.tiny_lm("deltanet", **TINY)


def test_forward_backward(model):
    common.check_forward_backward(model, V)


def test_cached_decoding_equals_full_forward(model):
    common.check_cached_decoding(model, V)
    common.check_chunked_prefill(model, V)


def test_generate_equals_argmax_loop(model):
    common.check_generate_greedy(model, V)


def test_generate_with_left_padding_matches_unpadded(model):
    common.check_generate_left_padded(model)


def test_save_load_round_trip(model, tmp_path):
    common.check_save_load(model, V, tmp_path / "ckpt")


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_padded_equals_unpadded(pooling, side):
    common.check_classification_padding("deltanet", V, pooling, side, **TINY)


def test_packed_sequences_equal_separate(model):
    common.check_packed_equals_separate(model, V)


@pytest.mark.parametrize(
    "fields",
    [dict(use_short_conv=False), dict(allow_neg_eigval=True, use_output_gate=False), dict(conv_size=2, head_dim=12)],
)
def test_variants(fields):
    m = common.tiny_lm("deltanet", **TINY, **fields)
    common.check_forward_backward(m, V)
    common.check_cached_decoding(m, V)
    common.check_packed_equals_separate(m, V)


def test_variants_change_the_layer():
    m = common.tiny_lm("deltanet", **TINY, use_short_conv=False, use_output_gate=False)
    mixer = m.model.layers[0].mixer
    assert not hasattr(mixer, "q_conv") and not hasattr(mixer, "g_proj")
    torch.manual_seed(3)
    a = common.tiny_lm("deltanet", **TINY)
    b = common.tiny_lm("deltanet", **TINY, allow_neg_eigval=True)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        assert not torch.allclose(a(x).logits, b(x).logits)


def test_hybrid_with_attention():
    m = common.tiny_lm("deltanet", **dict(TINY, num_hidden_layers=3), mixer_pattern=["deltanet", "attention", "deltanet"])
    assert [type(b.mixer).__name__ for b in m.model.layers] == ["DeltaNetMixer", "Attention", "DeltaNetMixer"]
    common.check_forward_backward(m, V)
    common.check_cached_decoding(m, V)
    common.check_generate_greedy(m, V)
    common.check_packed_equals_separate(m, V)


def test_reference_backend_equals_torch_backend():
    torch.manual_seed(0)
    a = common.tiny_lm("deltanet", **TINY)
    b = common.tiny_lm("deltanet", **TINY, kernel_backend="reference")
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, V, (2, 70))  # > one 64-token chunk
    with torch.no_grad():
        common.assert_close("torch vs reference backend", a(x).logits, b(x).logits, 1e-5)


@pytest.mark.triton
def test_triton_backend_in_the_model(triton_device):
    """The Triton kernels inside the layer (chunked for long inputs, fused recurrent for short ones and
    decoding, chunked again when gradients are needed) agree with the torch path."""
    torch.manual_seed(0)
    ref = common.tiny_lm("deltanet", **TINY).to(triton_device)
    tri = common.tiny_lm("deltanet", **TINY, kernel_backend="triton", recurrent_max_len=8).to(triton_device)
    tri.load_state_dict(ref.state_dict())
    x = torch.randint(0, V, (2, 20), device=triton_device)
    with torch.no_grad():
        common.assert_close("triton chunk vs torch", tri(x).logits, ref(x).logits, 1e-4)
        common.assert_close("triton recurrent vs torch", tri(x[:, :6]).logits, ref(x[:, :6]).logits, 1e-4)
    common.check_cached_decoding(tri, V, prefix=12, steps=3)
    ref.train(), tri.train()
    ref(x[:, :6], labels=x[:, :6]).loss.backward()
    tri(x[:, :6], labels=x[:, :6]).loss.backward()  # short + grads: routed to the chunked kernels
    for (n, pa), (_, pb) in zip(ref.named_parameters(), tri.named_parameters()):
        common.assert_close(n, pb.grad, pa.grad, 1e-4)


def test_state_size_and_cache_contents(model):
    cfg = model.config
    settings = model.model.layers[0].mixer_settings
    assert DeltaNetMixer.state_size(cfg, settings) == 2 * 16 * 16 + 3 * 32 * 3
    assert model.model.state_size() == 2 * DeltaNetMixer.state_size(cfg, settings)
    with torch.no_grad():
        out = model(torch.randint(0, V, (3, 5)), use_cache=True)
    layer = common.cache_of(out)[0]
    assert layer["state"].shape == (3, 2, 16, 16) and layer["state"].dtype == torch.float32
    assert layer["conv_q"].shape == (3, 32, 3)


def test_auto_classes_and_config_errors():
    assert seqzoo.list_architectures()["deltanet"] is DeltaNetConfig
    cfg = AutoConfig.for_model("deltanet", **TINY)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), DeltaNetForCausalLM)
    assert type(AutoModelForSequenceClassification.from_config(cfg)).__name__ == "DeltaNetForSequenceClassification"
    assert cfg.auto_map["AutoModelForCausalLM"] == "seqzoo_remote.DeltaNetForCausalLM"
    with pytest.raises(ValueError, match="conv_size"):
        seqzoo.make_config("deltanet", conv_size=0, **TINY)
    with pytest.raises(ValueError, match="kernel_backend"):
        seqzoo.make_config("deltanet", kernel_backend="cuda", **TINY)
    with pytest.raises(ValueError, match="mixer_pattern has 1 entries"):
        seqzoo.make_config("deltanet", mixer_pattern=["deltanet"], **TINY)
