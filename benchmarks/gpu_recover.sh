#!/usr/bin/env bash
# Recovery at budgets a CPU cannot reach, for a machine with one GPU: the default model at a uniform
# 30% and at the searched 30% genome, distilled on 1M and 5M LAMBADA tokens (bf16 autocast), with
# the same evaluation as the CPU table (WikiText-2 test 32 x 512, PIQA and ARC-Easy first 100).
# The dense and training-free rows are taken from the CPU results files (same genome, same protocol).
#
#   SELFPRUNE_WIKITEXT_TEST=/path/wiki.test.raw bash benchmarks/gpu_recover.sh
#
# A killed run continues with the same command (finished runs are kept, training resumes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
R=benchmarks/results/recover
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible to torch')"
"$PY" benchmarks/bench_recover.py --name uniform30 --ratio 0.3 --runs kd:1M,lora-kd:1M,kd:5M --limit 100 \
    --baseline-from "$R/uniform30.json" --out "$R/uniform30-gpu.json"
"$PY" benchmarks/bench_recover.py --name searched30 --rates benchmarks/results/search/quick-fitness256-r0.3/r0.3/evopress/s0/best.json \
    --runs kd:200k,kd:1M --limit 100 --baseline-from "$R/searched30.json" --out "$R/searched30-gpu.json"
"$PY" benchmarks/bench_recover.py --table "$R"/*.json
