"""The MQAR sweep: a grid of real (tiny) training runs, skipped when finished, collected into a table and
two figures; sweep-file errors name the key."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from seqzoo.common import ConfigError
from seqzoo.eval import sweep as sw

TINY_COMMON = {
    "model": {"num_hidden_layers": 1, "num_heads": 2},
    "task": {"name": "mqar", "vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2, "num_train": 64,
             "num_valid": 16, "num_test": 16, "seed": 0},
    "train": {"max_steps": 2, "batch_size": 8, "lr": 1.0e-3, "log_every": 1, "warmup_steps": 0},
    "eval": {"batch_size": 16},
}


def _write_sweep(tmp_path, **extra):
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    (cfgs / "_common.yaml").write_text(yaml.safe_dump(TINY_COMMON))
    for name, fields in {"transformer": {}, "deltanet": {"use_short_conv": False}}.items():
        (cfgs / f"{name}.yaml").write_text(yaml.safe_dump(
            {"base": "_common.yaml", "model": {"model_type": name, **fields}}))
    spec = {"output_dir": str(tmp_path / "out"), "architectures": "all", "configs": ".",
            "settings": [{"task.seq_len": 16, "task.num_kv_pairs": 2}],
            "grid": {"model.hidden_size": [32]}, "parallel": 2, "threads_per_run": 1, **extra}
    path = cfgs / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": spec}))
    return path


def _cli(path, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", SEQZOO_CACHE=str(path.parent.parent / "cache"),
               PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "seqzoo.eval.sweep", str(path), *args], capture_output=True,
                          text=True, env=env, timeout=900)


def test_sweep_runs_resumes_and_collects(tmp_path):
    path = _write_sweep(tmp_path)
    res = _cli(path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 runs, 0 finished, 2 to run" in res.stdout
    out = tmp_path / "out"
    cells = sw.cells(sw.load_sweep(path))
    assert sorted(c.arch for c in cells) == ["deltanet", "transformer"]
    for c in cells:
        assert (c.run_dir / "eval.json").is_file() and (c.run_dir / "final" / "config.json").is_file()
    results = json.loads((out / "results.json").read_text())
    assert len(results["best"]) == 2
    by = {r["arch"]: r for r in results["best"]}
    assert by["deltanet"]["state_size"] == 2 * 16 * 16 and not by["deltanet"]["state_grows_with_T"]  # 2 heads, no conv
    assert by["transformer"]["state_grows_with_T"] and by["transformer"]["state_size"] == 2 * 16 * 32  # K, V: T x 32
    assert all(0.0 <= r["metric"] <= 1.0 for r in results["best"])
    table = (out / "results.md").read_text()
    assert "| deltanet | 2 | 16 |" in table and "hidden_size 32" in table
    for png in ("metric_vs_width.png", "metric_vs_state_size.png"):
        assert (out / png).stat().st_size > 1000
    again = _cli(path)  # finished cells are skipped
    assert again.returncode == 0 and "2 runs, 2 finished, 0 to run" in again.stdout


def test_best_over_keeps_the_best_learning_rate(tmp_path):
    s = sw.load_sweep(_write_sweep(tmp_path, grid={"model.hidden_size": [16], "train.lr": [1e-3, 3e-3]},
                                   best_over=["train.lr"]))
    rows = [{"arch": "a", "model.hidden_size": 16, "train.lr": lr, "task.seq_len": 16, "metric": m,
             "state_size": 1, "state_grows_with_T": False} for lr, m in ((1e-3, 0.4), (3e-3, 0.7))]
    best = sw.best_rows(s, rows)
    assert len(best) == 1 and best[0]["train.lr"] == 3e-3 and best[0]["metric"] == 0.7
    assert len(sw.cells(s)) == 4  # 2 architectures x 2 learning rates


@pytest.mark.parametrize("change,message", [
    ({"grdi": {}}, r"sweep\.grdi: unknown key \(did you mean 'grid'\?\)"),
    ({"architectures": ["mamba9"]}, r"no run config for 'mamba9'"),
    ({"grid": {"hidden_size": [1]}}, r"'hidden_size' is not section\.field"),
    ({"best_over": ["train.lr"]}, r"best_over: 'train.lr' is not a grid key"),
    ({"parallel": 0}, r"sweep\.parallel: expected a positive integer"),
])
def test_sweep_file_errors_name_the_key(tmp_path, change, message):
    path = _write_sweep(tmp_path, **change)
    with pytest.raises(ConfigError, match=message):
        sw.load_sweep(path)
