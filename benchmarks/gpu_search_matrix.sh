#!/usr/bin/env bash
# The whole search ablation at the paper's budget, for a machine with one GPU: every arm, 30% and
# 50%, 3 seeds, 430 fitness evaluations each (Self-Pruner's population of 30 and 20 generations of
# 10 crossover + 10 mutation offspring), held-out perplexity on 32 x 512 WikiText-2 test
# tokens and the zero-shot average of PIQA and ARC-Easy (200 documents each) per best genome.
# Three passes: the default fitness (2 blocks of 512 LAMBADA tokens, as most CPU tables in
# docs/search.md) into OUT, staged fitness (2 then 8 blocks) into OUT-staged-fitness, and calibration and
# fitness on the offline Wikipedia passages (--calib wiki-passages, the paper preset's) into OUT-wiki-passages.
#
#   SELFPRUNE_WIKITEXT_TEST=/path/wiki.test.raw bash benchmarks/gpu_search_matrix.sh [OUT]
#
# A killed run continues with the same command (--resume keeps the finished rows).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/search/paper}
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible to torch')"
for pass in "lambada 2 $OUT" "lambada 2,8 $OUT-staged-fitness" "wiki-passages 2 $OUT-wiki-passages"; do
    read -r calib stages out <<< "$pass"
    "$PY" benchmarks/bench_search.py --device cuda --ratios 0.3,0.5 --seeds 0,1,2 --max-evals 430 \
        --population 30 --crossover 10 --mutation 10 --calib "$calib" \
        --fitness-samples "$stages" --fitness-seqlen 512 --eval-windows 32 --eval-seqlen 512 \
        --tasks piqa,arc_easy --zeroshot-limit 200 --resume --out "$out"
    "$PY" benchmarks/bench_search.py --table "$out/results.json"
done
