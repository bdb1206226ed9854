"""The LRA table from finished runs: cells, markers for non-benchmark settings, averages, files."""

import json

import yaml

from seqzoo.eval.lra.__main__ import main
from seqzoo.eval.lra.table import TASKS


def _fake_run(folder, arch, task_settings, accuracy):
    folder.mkdir(parents=True)
    (folder / "run_config.yaml").write_text(yaml.safe_dump({"model": {"model_type": arch}, "task": task_settings}))
    (folder / "eval.json").write_text(json.dumps({"task": task_settings, "split": "test", "step": 10,
                                                  "metrics": {"accuracy": accuracy, "loss": 1.0, "num_targets": 100}}))


def test_table_from_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    _fake_run(runs / "listops" / "deltanet", "deltanet", {"name": "lra_listops", "data_dir": None, "min_length": 501,
              "max_length": 1999, "max_depth": 10, "max_args": 10, "num_train": 96000, "num_valid": 2000,
              "num_test": 2000, "seed": 0}, 0.5)
    _fake_run(runs / "cpu" / "listops_transformer", "transformer", {"name": "lra_listops", "data_dir": None,
              "min_length": 100, "max_length": 512, "max_depth": 10, "max_args": 10, "num_train": 20000,
              "num_valid": 500, "num_test": 2000, "seed": 0}, 0.4)
    _fake_run(runs / "text" / "deltanet", "deltanet", {"name": "lra_text", "data_dir": "/data/aclImdb",
              "hub_dataset": "stanfordnlp/imdb", "max_length": 4096}, 0.7)
    _fake_run(runs / "mqar", "deltanet", {"name": "mqar"}, 0.99)  # not an LRA run: ignored
    assert main(["--runs", str(runs), "--output", str(tmp_path / "out")]) == 0
    md = capsys.readouterr().out
    row = next(line for line in md.splitlines() if line.startswith("| `deltanet`"))
    assert "| 50.00 | 70.00 | — | — | — | — | 60.00 (2) |" in row  # benchmark settings: no marker
    row = next(line for line in md.splitlines() if line.startswith("| `transformer`"))
    assert "40.00*" in row and "max_length=512 (benchmark: 1999)" in md
    assert "| MEGA | 63.14 | 90.43 | 91.25 | 90.44 | 96.01 | 97.98 | 88.21 (6) |" in md
    assert "| Transformer (LRA paper) | 36.37 | 64.27 | 57.46 | 42.44 | 71.40 | ✗ | 54.39 (5) |" in md
    data = json.loads((tmp_path / "out" / "lra_table.json").read_text())
    assert set(data["rows"]) == {"deltanet", "transformer"} and len(data["runs"]) == 3
    assert (tmp_path / "out" / "lra_table.png").stat().st_size > 1000
    assert (tmp_path / "out" / "lra_table.md").read_text() == md
    assert len(TASKS) == 6


def test_missing_runs_folder(tmp_path, capsys):
    assert main(["--runs", str(tmp_path / "none")]) == 2
    assert "configs/lra" in capsys.readouterr().err
