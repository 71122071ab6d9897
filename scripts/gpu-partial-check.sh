#!/usr/bin/env bash
# On a machine with NVIDIA GPUs and the NVIDIA container runtime: start, through the agent's own
# Docker runtime code, the container of a per-GPU rental that holds one GPU (the last one, or
# --index N), run `nvidia-smi -L` in it next to the host's `nvidia-smi -L`, and remove it.
# Exit 0: the rental sees exactly its GPU; 1: it sees another GPU (or not its own); 2: the check
# cannot run here (no GPU, no Docker, no NVIDIA container runtime). Read-only towards the GPUs
# (it lists them; it changes no setting). Pulls the image when the host does not have it.
#   scripts/gpu-partial-check.sh [--image ubuntu:22.04] [--index N]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
echo "== $(date -u +%FT%TZ) on $(hostname); python: $PY ($("$PY" --version 2>&1))" >&2
exec timeout 300 "$PY" scripts/gpu_partial_check.py "$@"
