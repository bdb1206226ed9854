"""Registration across every architecture: Auto classes, no collision with transformers' own model types."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import seqzoo
from seqzoo.architectures.base.registry import builtin_model_types


def test_every_architecture_is_registered_and_unique():
    arch = seqzoo.list_architectures()
    assert "transformer" in arch
    builtins = builtin_model_types()
    assert len(builtins) > 100  # the real transformers mapping, not an empty stand-in
    for model_type, cfg_cls in arch.items():
        assert model_type not in builtins, f"{model_type} collides with a transformers model type"
        assert cfg_cls.model_type == model_type
        cfg = AutoConfig.for_model(model_type, hidden_size=32, num_heads=2, num_hidden_layers=2)
        assert type(cfg) is cfg_cls
        for auto in (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification):
            model = auto.from_config(cfg)
            assert model.config.model_type == model_type
