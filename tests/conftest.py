"""Shared fixtures. Without a GPU, Triton kernels run in the CPU interpreter: TRITON_INTERPRET must be set
before anything imports triton, so it is set here, at collection time, before the tests import seqzoo."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (torch does not import triton)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from seqzoo.kernels import testing as ktest  # noqa: E402
from seqzoo.kernels._backend import interpreter_active, triton_available  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run scripts/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _autotune_trials():
    """Under the interpreter, every autotuned launch first runs a timing trial as on a GPU (see
    seqzoo.kernels.testing.autotune_trial_runs): in-place kernels must name their buffers in restore_value."""
    if not interpreter_active():
        yield
        return
    with ktest.autotune_trial_runs():
        yield


@pytest.fixture
def nan_empty():
    """Every torch.empty / empty_like / new_empty made while the test runs is filled with NaN."""
    with ktest.nan_empty():
        yield


@pytest.fixture
def triton_device():
    """Where Triton kernels run: CUDA when present, else CPU tensors through TRITON_INTERPRET=1.
    Triton is a hard dependency on Linux, so on CI this fixture never skips."""
    if not triton_available():
        pytest.fail("triton is not importable; it is a required dependency on Linux")
    if HAS_CUDA:
        return torch.device("cuda")
    assert interpreter_active(), "conftest sets TRITON_INTERPRET=1 when there is no GPU"
    return torch.device("cpu")


@pytest.fixture
def device():
    """Device for non-Triton tests: CUDA when present (scripts/gpu_check.sh), else CPU."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
