"""The Transformer baseline on a tiny config, through the shared architecture checks."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo
from seqzoo.architectures.transformer import TransformerConfig, TransformerForCausalLM

from . import common

V = 259
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V)


@pytest.fixture
def model():
    return common.tiny_lm("transformer", **TINY)


def test_forward_backward(model):
    common.check_forward_backward(model, V)


def test_loss_is_next_token_cross_entropy(model):
    x = torch.randint(0, V, (2, 10))
    labels = x.clone()
    labels[:, :4] = -100
    out = model(x, labels=labels)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, want)


def test_cached_decoding_equals_full_forward(model):
    common.check_cached_decoding(model, V)
    common.check_chunked_prefill(model, V)


def test_generate_equals_argmax_loop(model):
    common.check_generate_greedy(model, V)


def test_generate_with_left_padding_matches_unpadded():
    common.check_generate_left_padded(common.tiny_lm("transformer", **TINY))


def test_sdpa_equals_eager():
    torch.manual_seed(1)
    sdpa = AutoModelForCausalLM.from_config(seqzoo.make_config("transformer", **TINY), attn_implementation="sdpa").eval()
    eager = AutoModelForCausalLM.from_config(seqzoo.make_config("transformer", **TINY), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    x = torch.randint(0, V, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        for m in (None, mask):
            common.assert_close("sdpa vs eager", sdpa(x, attention_mask=m).logits, eager(x, attention_mask=m).logits, 1e-5)


def test_flash_attention_without_package_names_the_extra():
    from seqzoo.architectures.transformer.modeling_transformer import flash_attn_available

    if flash_attn_available():
        model = AutoModelForCausalLM.from_config(seqzoo.make_config("transformer", **TINY), attn_implementation="flash_attention_2")
        assert model.config._attn_implementation == "flash_attention_2"
        return
    with pytest.raises(ImportError, match=r"seqzoo\[flash\]"):
        AutoModelForCausalLM.from_config(seqzoo.make_config("transformer", **TINY), attn_implementation="flash_attention_2")


def test_save_load_round_trip(model, tmp_path):
    common.check_save_load(model, V, tmp_path / "ckpt")


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_padded_equals_unpadded(pooling, side):
    common.check_classification_padding("transformer", V, pooling, side, **TINY)


def test_packed_sequences_equal_separate(model):
    common.check_packed_equals_separate(model, V)


def test_grouped_query_attention_and_hybrid_pattern():
    m = common.tiny_lm("transformer", num_kv_heads=1, **TINY)
    assert m.model.layers[0].mixer.k_proj.out_features == 16
    common.check_cached_decoding(m, V)
    with pytest.raises(ValueError, match="num_kv_heads"):
        seqzoo.make_config("transformer", num_kv_heads=3, **TINY)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="mixer_pattern has 1 entries but num_hidden_layers is 2"):
        seqzoo.make_config("transformer", mixer_pattern=["attention"], **TINY)
    with pytest.raises(ValueError, match=r"layers\[1\]\.mixer: unknown mixer type 'nope'"):
        seqzoo.make_config("transformer", mixer_pattern=["attention", "nope"], **TINY)
    with pytest.raises(ValueError, match="mlp_type"):
        seqzoo.make_config("transformer", mlp_type="relu", **TINY)
    with pytest.raises(ValueError, match="divisible"):
        seqzoo.make_config("transformer", hidden_size=30, num_heads=4)


def test_bad_inputs_are_clear_errors(model):
    with pytest.raises(ValueError, match="input_ids must be"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="labels must be"):
        model(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size 1"):
        model(torch.zeros(2, 5, dtype=torch.long), cu_seqlens=torch.tensor([0, 5]))


def test_auto_classes_and_registry():
    arch = seqzoo.list_architectures()
    assert arch["transformer"] is TransformerConfig
    cfg = AutoConfig.for_model("transformer", **TINY)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), TransformerForCausalLM)
    assert type(AutoModelForSequenceClassification.from_config(cfg)).__name__ == "TransformerForSequenceClassification"
    assert cfg.auto_map["AutoModelForCausalLM"] == "seqzoo_remote.TransformerForCausalLM"
    with pytest.raises(ValueError, match=r"available: \["):
        seqzoo.make_config("no-such-arch")


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = common.tiny_lm("transformer", **TINY).train()
    b = common.tiny_lm("transformer", **TINY).train()
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing_enable()
    x = torch.randint(0, V, (2, 12))
    a(x, labels=x).loss.backward()
    b(x, labels=x).loss.backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        common.assert_close(n, pb.grad, pa.grad, 1e-5)
