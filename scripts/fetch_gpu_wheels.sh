#!/usr/bin/env bash
# Download, on a machine with internet (CPU side), the wheels scripts/gpu_check.sh installs on the GPU machine,
# which cannot reach a package index. Pure-Python wheels (py3-none-any), so the GPU image's Python need not
# match this one. The folder is git-ignored; carry it to the GPU run and pass it to gpu_check.sh --wheels.
#
#   bash scripts/fetch_gpu_wheels.sh [DIR]          (default DIR: gpu_wheels)
#
# EXTRA_WHEELS adds requirements (e.g. EXTRA_WHEELS="mamba-ssm==2.2.4"; packages that need a CUDA build
# have no wheel on PyPI and are not fetched here).
set -euo pipefail
DIR=${1:-gpu_wheels}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$DIR"
REQS=("fla-core==0.6.0" "einops")
# shellcheck disable=SC2206
[ -n "${EXTRA_WHEELS:-}" ] && REQS+=(${EXTRA_WHEELS})
"$PY" -m pip download --no-deps --only-binary=:all: --dest "$DIR" "${REQS[@]}"
ls -l "$DIR"
du -sh "$DIR"
