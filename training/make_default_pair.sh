#!/usr/bin/env bash
# Reproduce the shipped default pair under checkpoints/ (about 30-40 minutes on a 2-core CPU).
# Usage: bash training/make_default_pair.sh [TINYSTORIES_DIR]   (default ../shared/data/tinystories)
set -euo pipefail
SRC=${1:-../shared/data/tinystories}
python -m training.prepare --train "$SRC/TinyStories-train-part.txt" --val "$SRC/TinyStories-valid-part.txt" \
    --vocab-size 4096 --out data/tinystories
for model in gpt2 bdh; do
    python -m training.train --model "$model" --config training/configs/tiny_cpu.json \
        --set out="checkpoints/$model" --set log_dir=checkpoints/logs
done
python -m training.evaluate checkpoints/bdh --data data/tinystories --unigram data/tinystories/train.bin
python -m training.evaluate checkpoints/gpt2 --data data/tinystories
python -m training.compare --bdh checkpoints/bdh --gpt2 checkpoints/gpt2 --data data/tinystories \
    --logs checkpoints/logs --samples 3 --out checkpoints/REPORT.md
