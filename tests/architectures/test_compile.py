"""torch.compile: every architecture's training forward (dense batch, the LM loss) traces into one graph,
with no graph break (a break is usually a host sync such as ``Tensor.item()``, which also costs GPU time).
Checked with ``torch._dynamo.explain``, which traces without running inductor."""

import pytest
import torch
import torch._dynamo
from transformers import AutoModelForCausalLM

import seqzoo

TINY = dict(hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=259)


@pytest.mark.parametrize("model_type", sorted(seqzoo.list_architectures()))
def test_training_forward_has_no_graph_break(model_type):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(seqzoo.make_config(model_type, **TINY)).train()
    x = torch.randint(0, 256, (2, 37))

    def loss(ids):
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    torch._dynamo.reset()
    try:
        report = torch._dynamo.explain(loss)(x)
    finally:
        torch._dynamo.reset()
    reasons = [str(r.reason).splitlines()[0][:200] for r in report.break_reasons]
    assert report.graph_break_count == 0, f"{model_type}: {report.graph_break_count} graph breaks: {reasons}"
    assert report.graph_count == 1
