"""Spark on a tiny config: the shared architecture checks for each preset (both, FFN-only, attention-only)
with selection active (top_k below the sequence length), the sparse decode paths against the dense ones, the
sparsity report, and config errors."""

import os

import pytest
import torch

import seqzoo
from seqzoo.architectures.spark import SparkAttention, SparkConfig, SparkFFN
from seqzoo.common import ConfigError

from . import common

V = 259
# top_k 4 < T: every check runs with the statistical top-k selecting keys, not attending to all of them
TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=V, attn_top_k=4)


@pytest.fixture(params=["both", "ffn", "attention"])
def model(request):
    torch.manual_seed(0)
    return common.tiny_lm("spark", **TINY, sparsity=request.param)


def test_forward_backward(model):
    common.check_forward_backward(model, V)


def test_cached_decoding_equals_full_forward(model):
    common.check_cached_decoding(model, V)
    common.check_chunked_prefill(model, V)


def test_generate_equals_argmax_loop(model):
    common.check_generate_greedy(model, V)


def test_packed_sequences_equal_separate(model):
    common.check_packed_equals_separate(model, V)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = common.tiny_lm("spark", **TINY)
    loaded = common.check_save_load(m, V, tmp_path / "ckpt")
    assert loaded.config.sparsity == "both" and loaded.config.layers == m.config.layers


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_padded_equals_unpadded(pooling, side):
    common.check_classification_padding("spark", V, pooling, side, **TINY)


def test_generate_with_left_padding_matches_unpadded():
    torch.manual_seed(0)
    common.check_generate_left_padded(common.tiny_lm("spark", **TINY), long=9, short=6, new=5)


def test_presets_pick_the_layers():
    kinds = {}
    for sparsity in ("both", "ffn", "attention"):
        m = common.tiny_lm("spark", **TINY, sparsity=sparsity)
        kinds[sparsity] = {(type(b.mixer).__name__, type(b.ffn).__name__) for b in m.model.layers}
    assert kinds == {"both": {("SparkAttention", "SparkFFN")}, "ffn": {("Attention", "SparkFFN")},
                     "attention": {("SparkAttention", "SwiGLU")}}


@pytest.mark.parametrize("native", ["1", "0"])
def test_spark_ffn_sparse_path_equals_dense_and_has_no_extra_parameters(native, monkeypatch):
    """The gather paths (decoding: several tokens; one token, by the C kernel or by PyTorch ops) and the masked
    dense path give the same numbers; the FFN has the parameters of one d-wide input projection plus the down
    projection. The one-token path takes the C kernel unless SEQZOO_NATIVE=0 (counted, so that a kernel that
    declined its inputs does not pass unnoticed)."""
    from seqzoo.architectures.spark import modeling_spark
    from seqzoo.kernels.testing import record_taken

    monkeypatch.setenv("SEQZOO_NATIVE", native)
    ran = record_taken(monkeypatch, modeling_spark, "spark_ffn_step_native")
    torch.manual_seed(0)
    m = common.tiny_lm("spark", **dict(TINY, hidden_size=48), intermediate_size=200)
    ffn = m.model.layers[0].ffn
    assert sum(p.numel() for p in ffn.parameters()) == 2 * 200 * 48
    x = torch.randn(1, 3, 48)
    with torch.no_grad():
        sparse = ffn(x)  # 3 tokens <= sparse_max_tokens: gather path
        one = torch.cat([ffn(x[:, i:i + 1]) for i in range(3)], 1)  # the one-token path
        ffn.settings.sparse_max_tokens = 0
        dense = ffn(x)
    common.assert_close("sparse vs dense FFN", sparse, dense, 1e-6)
    common.assert_close("one token vs dense FFN", one, dense, 1e-6)
    assert ran == [native == "1"] * 3, ran
    a = ffn.activations(x)
    assert 0.0 < (a != 0).float().mean().item() < 0.2  # about 8% of 200 neurons


def test_sparsity_report():
    torch.manual_seed(0)
    m = common.tiny_lm("spark", **dict(TINY, num_hidden_layers=2), intermediate_size=400)
    x = torch.randint(0, V, (2, 40))
    report = m.sparsity_report(x)
    for i in range(2):
        assert 0.03 < report[f"ffn_kept_fraction/layer_{i}"] < 0.15
        assert report[f"attn_max_keys_per_query/layer_{i}"] <= 12
    assert report["attn_keys_per_query"] < 8  # top_k 4 of up to 40 visible keys
    assert 0 < report["attn_kept_fraction"] < 1
    assert all(not mod.record_sparsity for mod in m.modules() if isinstance(mod, (SparkAttention, SparkFFN)))
    dense_attn = common.tiny_lm("spark", **TINY, sparsity="ffn").sparsity_report(x)
    assert set(dense_attn) == {"ffn_kept_fraction", "ffn_kept_fraction/layer_0", "ffn_kept_fraction/layer_1"}


@pytest.mark.triton
def test_triton_backend_in_the_model(triton_device):
    torch.manual_seed(0)
    ref = common.tiny_lm("spark", **TINY).to(triton_device)
    tri = common.tiny_lm("spark", **TINY, kernel_backend="triton").to(triton_device)
    tri.load_state_dict(ref.state_dict())
    x = torch.randint(0, V, (1, 12), device=triton_device)
    ref.train(), tri.train()
    la = ref(x, labels=x).loss
    lb = tri(x, labels=x).loss
    common.assert_close("triton vs torch loss", lb, la, 1e-5)
    la.backward(), lb.backward()
    for (n, pa), (_, pb) in zip(ref.named_parameters(), tri.named_parameters()):
        common.assert_close(n, pb.grad, pa.grad, 1e-4)


def test_config_errors():
    assert seqzoo.list_architectures()["spark"] is SparkConfig
    with pytest.raises(ConfigError, match="sparsity"):
        seqzoo.make_config("spark", sparsity="some", **TINY)
    with pytest.raises(ValueError, match="predictor_dims"):
        seqzoo.make_config("spark", attn_predictor_dims=16, **TINY)  # head_dim is 16
    with pytest.raises(ValueError, match="kept_fraction"):
        seqzoo.make_config("spark", ffn_kept_fraction=1.5, **TINY)
    with pytest.raises(ValueError, match="top_k"):
        seqzoo.make_config("spark", **dict(TINY, attn_top_k=0))


def test_decode_benchmark_runs_at_a_tiny_size():
    """`python -m seqzoo.bench spark_decode` at a tiny size, batch 1 and 3: the dense model, Spark with its C
    kernels and Spark with SEQZOO_NATIVE=0, for the FFN alone and the whole decode step (speed is not asserted)."""
    import argparse

    from seqzoo.bench import spark_decode

    parser = argparse.ArgumentParser()
    spark_decode.add_arguments(parser)
    args = parser.parse_args("--widths 64 --batch-sizes 1 3 --context 40 --layers 1 --steps 1 --rounds 2 "
                             "--head-dim 16 --top-k 8".split())
    args.device = torch.device("cpu")
    before = os.environ.get("SEQZOO_NATIVE")
    rows = spark_decode.run(args)
    one = [("dense transformer: FFN (SwiGLU)", "1 token"), ("spark: FFN (SparkFFN)", "1 token"),
           ("spark, SEQZOO_NATIVE=0: FFN (SparkFFN)", "1 token"), ("dense transformer (dense)", "decode step"),
           ("spark (both)", "decode step"), ("spark, SEQZOO_NATIVE=0 (both)", "decode step")]
    assert [(row["impl"], row["pass"]) for row in rows] == one + one
    assert [row["tokens"] for row in rows] == [1] * 6 + [3] * 6
    assert all(row["shape"].startswith(f"B={row['tokens']} ") and row["ms"] > 0 for row in rows)
    assert os.environ.get("SEQZOO_NATIVE") == before  # the switch is put back
