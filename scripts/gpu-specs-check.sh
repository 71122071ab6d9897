#!/usr/bin/env bash
# Run the host agent's specs collector once on this machine and print its JSON (well under two
# minutes: the disk test writes 64 MB and stops after 10 s at most; each GPU query has a timeout).
# Meant for a GPU machine: the JSON's "sources" shows what NVML and nvidia-smi each reported, and
# "specs"/"gpu_array" what the agent would send to the market.
#   scripts/gpu-specs-check.sh [--disk-path DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DISK_PATH=/var/lib/docker
[ -d "$DISK_PATH" ] || DISK_PATH=${TMPDIR:-/tmp}

{
  echo "== $(date -u +%FT%TZ) on $(hostname); python: $PY ($("$PY" --version 2>&1))"
  echo "== nvidia-smi, raw (for comparison):"
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits \
    || echo "(nvidia-smi unavailable)"
  "$PY" -c 'import pynvml' 2>/dev/null \
    || echo "note: pynvml (nvidia-ml-py) is not importable: the NVML source will report an error"
  "$PY" -c 'import psutil' 2>/dev/null \
    || echo "note: psutil is not importable: CPU/RAM/disk come from /proc instead"
} >&2

exec timeout 110 "$PY" -m openclore.agent.specs --disk-path "$DISK_PATH" --all-sources "$@"
