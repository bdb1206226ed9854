# The two commands of the README. Each bootstraps a local virtual environment on a fresh machine
# (create it, install torch, install seqzoo with its dev extra), then runs.
#
#   make test     the whole test suite (what CI runs)
#   make demo     the default job: configs/demo.yaml (a small model learns MQAR on a CPU in a few minutes)
#
# TORCH_REQ picks the torch requirement; CI uses the local CPU wheel: make test TORCH_REQ=torch==2.13.0

PYTHON    ?= python3
VENV      ?= .venv
TORCH_REQ ?= torch>=2.11
PYTEST_ARGS ?=
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.seqzoo-installed

.PHONY: test demo install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_REQ)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python train.py configs/demo.yaml

clean:
	rm -rf $(VENV) outputs
