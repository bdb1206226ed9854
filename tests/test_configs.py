"""Every shipped experiment config resolves (keys, types, architecture fields) and builds its model the way
the trainer does (tiny datasets: the task's split sizes are overridden, nothing is trained)."""

import glob
import os

import pytest
import yaml

import seqzoo
from seqzoo.config import ConfigError, load_config
from seqzoo.trainer import build_model, build_model_config, build_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_run_config(path: str) -> bool:
    """Files named _*.yaml are bases that others include (configs/mqar/_common.yaml); a file with a top-level
    ``sweep`` key is a sweep of runs (python -m seqzoo.eval.sweep), not a run."""
    if os.path.basename(path).startswith("_"):
        return False
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return "sweep" not in data


CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if is_run_config(p))


def test_there_is_a_config_for_every_architecture():
    names = {os.path.basename(p)[:-5] for p in CONFIGS if os.sep + "mqar" + os.sep in p}
    assert set(seqzoo.list_architectures()) <= names, names
    assert os.path.join(ROOT, "configs", "demo.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_resolves_and_builds_its_model(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "cache"))
    cfg = load_config(path, [f"output_dir={tmp_path / 'run'}"])
    task = build_task(cfg)
    model = build_model(cfg, build_model_config(cfg, task), task)
    assert model.config.model_type == cfg.model["model_type"]
    assert sum(p.numel() for p in model.parameters()) > 0


# ---- model.layers: checked when the config is resolved, before a run writes anything -------------------------

LAYERS_BASE = {
    "model": {"model_type": "deltanet", "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2},
    "task": {"name": "mqar", "vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2, "num_train": 64,
             "num_valid": 16, "num_test": 16},
    "train": {"max_steps": 2, "batch_size": 16, "report_to": ["none"], "progress_bar": False},
}


def write_layers_config(tmp_path, layers):
    raw = {k: dict(v) for k, v in LAYERS_BASE.items()}
    raw["model"]["layers"] = layers
    raw["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("layers, message", [
    ([{"mixer": "deltanet"}, {"mixer": {"type": "attenton", "num_kv_heads": 1}, "ffn": "none"}],
     r"model\.layers\[1\]\.mixer: unknown mixer type 'attenton' \(did you mean 'attention'\?\); "
     r"registered mixer types: .*attention.*deltanet"),
    ([{"mixer": "deltanet"}, {"mixer": {"type": "attention", "num_kv_head": 1}}],
     r"model\.layers\[1\]\.mixer \(attention\): unknown setting 'num_kv_head' .*did you mean 'num_kv_heads'"),
    ([{"mixer": "deltanet", "ffn": "swigloo"}, {"mixer": "deltanet"}],
     r"model\.layers\[0\]\.ffn: unknown ffn type 'swigloo' \(did you mean 'swiglu'\?\)"),
    ([{"mixer": "deltanet"}], r"model\.layers has 1 entries but num_hidden_layers is 2"),
    ("deltanet", r"model\.layers: expected list or null, got 'deltanet' \(str\)"),
])
def test_bad_layers_in_yaml_stop_the_run_before_anything_is_written(tmp_path, capsys, layers, message):
    import re

    from seqzoo.trainer import main

    path = write_layers_config(tmp_path, layers)
    with pytest.raises(ConfigError, match=message):
        load_config(path)  # resolving the config is enough to find it
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqzoo-train: error: model.") and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no output_dir, no data cache written


def test_a_hybrid_layers_list_in_yaml_resolves_and_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "cache"))
    layers = [{"mixer": "deltanet"}, {"mixer": {"type": "attention", "num_kv_heads": 1}, "ffn": "none"}]
    cfg = load_config(write_layers_config(tmp_path, layers))
    assert cfg.model["layers"] == layers  # kept as written: run_config.yaml reruns the same hybrid
    task = build_task(cfg)
    config = build_model_config(cfg, task)
    model = build_model(cfg, config, task)
    first, second = model.model.layers
    assert type(first.mixer) is not type(second.mixer)  # a DeltaNet layer, then an attention layer
    assert first.ffn is not None and second.ffn is None  # ffn: none
    assert second.mixer_settings.num_kv_heads == 1
