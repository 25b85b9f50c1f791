#!/usr/bin/env bash
# Rebuild the shipped pair under checkpoints/ from TinyStories text, one CPU thread per run,
# one run at a time. Two stages per model: tiny_cpu.json (2.4M tokens in 256-token windows),
# then tiny_cpu_long.json continues those weights (--init) on 512-token windows, the length
# of the stories served. It overwrites checkpoints/ (--force); for a pair of your own,
# follow the README instead.
# Usage: bash training/make_default_pair.sh [TINYSTORIES_DIR]   (default ../shared/data/tinystories)
set -euo pipefail
SRC=${1:-../shared/data/tinystories}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m training.prepare --train "$SRC/TinyStories-train-part.txt" --val "$SRC/TinyStories-valid-part.txt" \
    --vocab-size 4096 --out data/tinystories
rm -rf checkpoints/logs  # the shipped curves are this run's only
for model in gpt2 bdh; do
    python -m training.train --model "$model" --config training/configs/tiny_cpu.json --force \
        --set out="results/default-pair/$model-256" --set state_dir="results/state/default-$model-256" \
        --set log_dir=checkpoints/logs/stage1
    python -m training.train --model "$model" --config training/configs/tiny_cpu_long.json --force \
        --init "results/default-pair/$model-256" \
        --set out="checkpoints/$model" --set state_dir="results/state/default-$model-512" --set log_dir=checkpoints/logs
done
python -m training.evaluate checkpoints/bdh --data data/tinystories --unigram data/tinystories/train.bin
python -m training.evaluate checkpoints/gpt2 --data data/tinystories
python -m training.evaluate checkpoints/bdh --data data/tinystories --block-size 2048   # past its window
python -m training.compare --bdh checkpoints/bdh --gpt2 checkpoints/gpt2 --data data/tinystories \
    --logs checkpoints/logs --samples 3 --notes checkpoints/SWEEP.md --out checkpoints/REPORT.md
