"""Model diagnostics beside the task's metrics: a Spark model's measured sparsity (fraction of FFN neurons and
of keys used, per layer) reaches metrics.jsonl, eval.json and the eval CLI; models without diagnostics add
nothing."""

import json
import subprocess
import sys
import os

import torch
from transformers import AutoModelForCausalLM

import seqzoo
from seqzoo.config import resolve
from seqzoo.eval.evaluate import model_diagnostics
from seqzoo.trainer import train


def _run_config(tmp_path, model):
    return resolve({
        "output_dir": str(tmp_path / "run"),
        "model": model,
        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 32, "num_kv_pairs": 2, "num_train": 64,
                 "num_valid": 16, "num_test": 16, "seed": 0},
        "train": {"max_steps": 4, "batch_size": 8, "lr": 1.0e-3, "log_every": 2, "report_to": ["none"],
                  "progress_bar": False, "data_cache_dir": str(tmp_path / "cache")},
        "eval": {"every_steps": 2, "batch_size": 16},
    })


def test_spark_sparsity_is_logged_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQZOO_CACHE", str(tmp_path / "cache"))
    cfg = _run_config(tmp_path, {"model_type": "spark", "hidden_size": 32, "num_hidden_layers": 2,
                                 "num_heads": 2, "attn_top_k": 4, "ffn_kept_fraction": 0.25})
    result = train(cfg)
    test = result["metrics"]
    assert 0.15 < test["ffn_kept_fraction"] < 0.35  # ~25% of the FFN neurons kept, measured
    assert 0 < test["attn_keys_per_query"] <= 6 and 0 < test["attn_kept_fraction"] < 1
    assert {"ffn_kept_fraction/layer_0", "ffn_kept_fraction/layer_1"} <= set(test)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["type"] == "eval" and r["split"] == "valid"]
    assert valid and all("ffn_kept_fraction" in r and "attn_keys_per_query" in r for r in valid)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]
    assert saved["ffn_kept_fraction"] == test["ffn_kept_fraction"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "seqzoo.eval", "--model", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = json.loads(res.stdout)
    assert "ffn_kept_fraction" in printed["metrics"] and "attn_kept_fraction" in printed["metrics"]


def test_models_without_diagnostics_add_nothing():
    model = AutoModelForCausalLM.from_config(seqzoo.make_config("deltanet", hidden_size=32, num_hidden_layers=2,
                                                                num_heads=2))
    assert model_diagnostics(model, {"input_ids": torch.randint(0, 256, (2, 9))}) == {}
