#!/usr/bin/env bash
# One-command GPU check, about 5 minutes on one GPU (6.5 at most); prints figures only.
#
#     bash benchmarks/gpu_check.sh [DATA_ROOT]      (default: $HYPERMAML_DATA_ROOT, else ../shared/data/omniglot)
#
# 1. Meta-training episodes/s of MAML (2nd order, 1 step) and HyperMAML (512x3), 5-way 1-shot Omniglot,
#    at meta-batch 32 and 128, the whole meta-batch in one pass: eager vs torch.compile, fp32 vs bf16
#    (benchmarks/throughput.py: every figure from a fresh process).
# 2. A short `python -m hypermaml.train --device cuda` run (HyperMAML, at most 60 s): its test accuracy.
# 3. Trials per GPU: the smoke study with 8 trials per algorithm, 1, 2, 4 and 8 trials sharing the GPU
#    (--gpus-per-trial 1/N, N at a time): the wall time of each algorithm's tuning.
# Each part has a time limit, so the whole check stays near 5 minutes; a part that reaches its limit
# has printed every figure it measured before it.
set -u
cd "$(dirname "$0")/.."
DATA="${1:-${HYPERMAML_DATA_ROOT:-../shared/data/omniglot}}"
PY="${PYTHON:-python}"
VARIANTS="fp32 bf16 fp32+compile bf16+compile"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== decoding Omniglot into the image cache (once per machine)"
timeout 60 $PY -c "import sys; from hypermaml.datasets import load_split; [load_split('omniglot', s, sys.argv[1]) for s in ('train', 'val', 'test')]" "$DATA"

for MB in 32 128; do
    echo "== episodes/s, meta-batch $MB (eager vs compiled, fp32 vs bf16)"
    timeout $((MB == 32 ? 90 : 60)) $PY benchmarks/throughput.py --data-root "$DATA" --device cuda --task-chunk 0 --meta-batch $MB --cases maml-1step hypermaml --no-loop --variants $VARIANTS --rounds 1 --warmup 3 --steps 10
done

echo "== short training run (at most 60 s): HyperMAML 512x3, 5-way 1-shot, meta-batch 32, 5 x 100 steps, 600 test episodes"
OUT="$(mktemp -d)"
timeout 60 $PY -m hypermaml.train --data-root "$DATA" --device cuda --algorithm hypermaml --hn-hidden 512 --hn-layers 3 --way 5 --shot 1 --meta-batch 32 --epochs 5 --steps-per-epoch 100 --val-episodes 200 --test-episodes 600 --output "$OUT/run" | tail -n 1

echo "== trials per GPU: the smoke study, 8 trials per algorithm, N trials sharing the GPU (at most 30 s each)"
for N in 1 2 4 8; do
    START=$SECONDS
    timeout 30 $PY -m hpo.search --preset smoke --data-root "$DATA" --name "per-gpu-$N" --storage-path "$OUT/ray" --tracking-uri "sqlite:///$OUT/mlflow-$N.db" --trials 8 --max-concurrent $N --gpus-per-trial "$(awk "BEGIN { print 1 / $N }")" > "$OUT/per-gpu-$N.txt" 2>&1
    echo "$N per GPU: exit $?, $((SECONDS - START)) s in all; $(grep -oE '^tune [a-z]+ done in [0-9]+:[0-9]+' "$OUT/per-gpu-$N.txt" | tr '\n' ';')"
done
rm -rf "$OUT"
