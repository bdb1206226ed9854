"""scripts/gpu_check.sh on a CPU: the step selection (--only) and the dry run of one bench, whose GPU arguments
must parse (--check-args) before a GPU is spent on them."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, *args):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_only_rejects_an_unknown_step(tmp_path):
    res = _run(tmp_path, "--only", "tests,rms_nrom")
    assert res.returncode == 2
    assert "rms_nrom" in res.stderr and "rms_norm" in res.stderr


def test_dry_run_of_one_bench_checks_its_gpu_arguments(tmp_path):
    res = _run(tmp_path, "--dry-run", "--only", "rms_norm")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "gpu tests: not selected" in summary and "kernel tests: not selected" in summary
    assert "--rows 4096 --dim 8192 --check-args" in summary
    assert "exit 0" in summary and "exit 1" not in summary and "exit 2" not in summary
    assert "delta_rule" not in summary.split("\n", 1)[1]  # only the selected op ran
    bench = (tmp_path / "bench.txt").read_text()
    assert "seqzoo.bench rms_norm: arguments ok" in bench and "copy (ceiling)" in bench


def test_check_args_rejects_a_bad_argument():
    res = subprocess.run([sys.executable, "-m", "seqzoo.bench", "rms_norm", "--rows", "many", "--check-args"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--rows" in res.stderr
