#!/usr/bin/env bash
# Rebuild the shipped pair under checkpoints/ from TinyStories text, one CPU thread per run.
# Stage by stage, each continuing the last (--init), as the pair was made:
#   1. tiny_cpu.json: 2.4M tokens of the 2 MB train part in 256-token windows;
#   2. tiny_cpu_long.json: 800k more in 512-token windows, the length of the stories served;
#   3. the warm start: tiny_cpu_long.json on the train part + the extra stories (3.68M
#      tokens), lr 1e-3 -> 1e-4, GPT-2 9M tokens, BDH 2.7M (about 80 minutes each);
#   4. on the same data again, a fresh cosine from a lower peak: GPT-2 with dropout 0.1
#      (it has seen the data 2.4 times by then), lr 4e-4 -> 2e-5, 6M tokens; BDH (under one
#      pass so far) without, lr 6e-4 -> 3e-5, 3.5M tokens; seed 2026.
#   5. again, lower: GPT-2 lr 3e-4 -> 1.5e-5, 4.5M tokens; BDH with dropout 0.1, lr 4e-4 ->
#      2e-5, 4M tokens; seed 2027. Then GPT-2 alone, stage "6A" (the arm of an A/B on the
#      recased stories that did not use them): lr 1.5e-4 -> 1e-5, 1.2M tokens, seed 2028.
#   6. both again, side by side, seed 2029: GPT-2 (stage "7") from 6A with dropout 0.15, lr
#      2.5e-4 -> 1e-5, 5M tokens; BDH (stage "6") lr 2.5e-4 -> 1e-5, begun for 5M tokens and
#      cut to 3.4M at step 421 (stopped, then --resume with the shorter budget), so that its
#      cosine ended within the session.
#   7. BDH alone (stage "7"), seed 2030: dropout 0.15, lr 2e-4 -> 1e-5, 3.6M tokens.
#   8. BDH alone (stage "8"), seed 2031: lr 1.5e-4 -> 1e-5, begun for 4.2M tokens and cut to
#      3.6M at step 450 (stopped, then --resume with the shorter budget), as stage 6 was.
#   9. BDH alone (stage "9"), seed 2032: lr 1e-4 -> 1e-5, begun for 4M tokens and cut to
#      2.87M at step 886, the same way.
#  10. BDH alone (stage "10"), seed 2033: lr 8e-5 -> 1e-5, 3M tokens (it was stopped at step
#      150 by a session's end and resumed with --resume, which continues the run unchanged).
#  11. BDH alone (stage "11"), seed 2034: lr 5e-5 -> 5e-6, 3M tokens (also stopped by a
#      session's end, past its step-450 state, and resumed from that state unchanged).
# --init takes the architecture from the checkpoint, dropout included, so stages 4, 5 and 7
# set the dropout in a copy of the stage before's config.json (dropout changes no weight).
# It overwrites checkpoints/ (--force); for a pair of your own, follow the README instead.
# Usage: bash training/make_default_pair.sh [TINYSTORIES_DIR]   (default ../shared/data/tinystories)
set -euo pipefail
SRC=${1:-../shared/data/tinystories}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=results/default-pair
python -m training.prepare --train "$SRC/TinyStories-train-part.txt" --val "$SRC/TinyStories-valid-part.txt" \
    --vocab-size 4096 --out data/tinystories-part
python -m training.prepare --train "$SRC/TinyStories-train-part.txt" "$SRC/TinyStories-train-extra.txt" \
    --val "$SRC/TinyStories-valid-part.txt" --tokenizer data/tinystories-part/tokenizer.json --out data/tinystories
rm -rf checkpoints/logs  # the shipped curves are this run's only
train() {  # model stage preset init extra-settings...
    local model=$1 stage=$2 preset=$3 init=$4
    shift 4
    python -m training.train --model "$model" --config "training/configs/$preset.json" --force \
        ${init:+--init "$init"} --set out="$R/$model-$stage" --set state_dir="results/state/default-$model-$stage" \
        --set log_dir="checkpoints/logs/$stage" "$@"
}
init_copy() {  # checkpoint [dropout]: copy it to <checkpoint>-init for --init, with that dropout
    rm -rf "$1-init" && cp -r "$1" "$1-init"
    [ -z "${2:-}" ] || python - "$1-init/config.json" "$2" <<'EOF'
import json, sys
path, dropout = sys.argv[1], float(sys.argv[2])
config = json.load(open(path))
# GPT-2 has three dropouts, BDH one.
keys = ["resid_pdrop", "embd_pdrop", "attn_pdrop"] if config["model_type"] == "gpt2" else ["dropout"]
config.update(dict.fromkeys(keys, dropout))
json.dump(config, open(path, "w"), indent=2)
EOF
}
for model in gpt2 bdh; do
    train "$model" 1 tiny_cpu "" --set data=data/tinystories-part
    train "$model" 2 tiny_cpu_long "$R/$model-1" --set data=data/tinystories-part
    if [ "$model" = gpt2 ]; then warm=9000000; else warm=2700000; fi
    train "$model" 3 tiny_cpu_long "$R/$model-2" --set data=data/tinystories --set max_tokens=$warm \
        --set eval_interval=300 --set eval_windows=40 --set warmup_steps=30
    if [ "$model" = gpt2 ]; then
        init_copy "$R/gpt2-3" 0.1
        last=(--set max_tokens=6000000 --set lr=0.0004 --set min_lr=0.00002 --set eval_interval=300)
    else
        init_copy "$R/bdh-3"
        last=(--set max_tokens=3500000 --set lr=0.0006 --set min_lr=0.00003 --set eval_interval=150)
    fi
    train "$model" 4 tiny_cpu_long "$R/$model-3-init" --set data=data/tinystories --set warmup_steps=50 \
        --set eval_windows=40 --set seed=2026 "${last[@]}"
    # Stage 5, both models again, from a lower peak; BDH now with dropout 0.1 too (by then
    # it has seen the data about 1.7 times, and unseen training-split stories score 0.38
    # nats worse than seen ones: it memorises).
    if [ "$model" = gpt2 ]; then
        init_copy "$R/gpt2-4"
        last=(--set max_tokens=4500000 --set lr=0.0003 --set min_lr=0.000015 --set eval_interval=300)
    else
        init_copy "$R/bdh-4" 0.1
        last=(--set max_tokens=4000000 --set lr=0.0004 --set min_lr=0.00002 --set eval_interval=150)
    fi
    train "$model" 5 tiny_cpu_long "$R/$model-4-init" --set data=data/tinystories --set warmup_steps=50 \
        --set eval_windows=40 --set seed=2027 "${last[@]}"
    final="$R/$model-5"
    if [ "$model" = gpt2 ]; then  # 6A (while BDH's stage 5 ran): a short, lower cosine; then 7
        train gpt2 6A tiny_cpu_long "$R/gpt2-5" --set data=data/tinystories --set warmup_steps=20 \
            --set eval_windows=40 --set seed=2028 --set max_tokens=1200000 --set lr=0.00015 --set min_lr=0.00001 \
            --set eval_interval=200
        init_copy "$R/gpt2-6A" 0.15
        train gpt2 7 tiny_cpu_long "$R/gpt2-6A-init" --set data=data/tinystories --set warmup_steps=50 \
            --set eval_windows=40 --set seed=2029 --set max_tokens=5000000 --set lr=0.00025 --set min_lr=0.00001 \
            --set eval_interval=150
        final="$R/gpt2-7"
    else
        train bdh 6 tiny_cpu_long "$R/bdh-5" --set data=data/tinystories --set warmup_steps=50 \
            --set eval_windows=40 --set seed=2029 --set max_tokens=5000000 --set lr=0.00025 --set min_lr=0.00001 \
            --set eval_interval=150 --stop-after 421
        python -m training.train --resume results/state/default-bdh-6 --set max_tokens=3400000
        init_copy "$R/bdh-6" 0.15
        train bdh 7 tiny_cpu_long "$R/bdh-6-init" --set data=data/tinystories --set warmup_steps=50 \
            --set eval_windows=40 --set seed=2030 --set max_tokens=3600000 --set lr=0.0002 --set min_lr=0.00001 \
            --set eval_interval=150
        train bdh 8 tiny_cpu_long "$R/bdh-7" --set data=data/tinystories --set warmup_steps=50 \
            --set eval_windows=40 --set seed=2031 --set max_tokens=4200000 --set lr=0.00015 --set min_lr=0.00001 \
            --set eval_interval=150 --stop-after 450
        python -m training.train --resume results/state/default-bdh-8 --set max_tokens=3600000
        train bdh 9 tiny_cpu_long "$R/bdh-8" --set data=data/tinystories --set warmup_steps=50 \
            --set eval_windows=40 --set seed=2032 --set max_tokens=4000000 --set lr=0.0001 --set min_lr=0.00001 \
            --set eval_interval=150 --stop-after 886
        python -m training.train --resume results/state/default-bdh-9 --set max_tokens=2867200
        train bdh 10 tiny_cpu_long "$R/bdh-9" --set data=data/tinystories --set warmup_steps=50 \
            --set eval_windows=40 --set seed=2033 --set max_tokens=3000000 --set lr=0.00008 --set min_lr=0.00001 \
            --set eval_interval=150
        train bdh 11 tiny_cpu_long "$R/bdh-10" --set data=data/tinystories --set warmup_steps=50 \
            --set eval_windows=40 --set seed=2034 --set max_tokens=3000000 --set lr=0.00005 --set min_lr=0.000005 \
            --set eval_interval=150
        final="$R/bdh-11"
    fi
    rm -rf "checkpoints/$model" && cp -r "$final" "checkpoints/$model"
done
python -m training.evaluate checkpoints/bdh --data data/tinystories --unigram data/tinystories/train.bin
python -m training.evaluate checkpoints/gpt2 --data data/tinystories
python -m training.compare --bdh checkpoints/bdh --gpt2 checkpoints/gpt2 --data data/tinystories \
    --logs checkpoints/logs/11 checkpoints/logs/7/gpt2-*.csv --samples 3 --temperature 0.9 --top-k 0 --top-p 0.95 \
    --notes checkpoints/SWEEP.md --out checkpoints/REPORT.md
