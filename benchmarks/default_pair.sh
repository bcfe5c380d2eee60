#!/usr/bin/env bash
# The default pair, trained and measured (results/default_pair/). Each step resumes where it stopped.
# One thread per job; two jobs side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SAMPLE=${SAMPLE:-300}        # seeded sample per benchmark
T2T_SAMPLE=${T2T_SAMPLE:-40} # t2t costs ~10x a cloze item (the sharer writes 64 tokens): first items of the sample
OUT=results/default_pair

# 1. two fusers with the choice objective: the question alone (cloze) and the options listed (cloze-options)
c2c train recipes/default_pair_choices.yaml &
c2c train recipes/default_pair_choices_options.yaml &
wait

# 2. pick the protocol on dev splits (never on test): C2C against its shuffled-sharer control
c2c eval --fuser runs/default_pair_choices --bench arc-easy,arc-challenge --split dev --limit 150 --seed 1 \
    --methods receiver,sharer,c2c,c2c-shuffled --scoring cloze --out "$OUT/dev/cloze" &
c2c eval --fuser runs/default_pair_choices_options --bench arc-easy,arc-challenge --split dev --limit 150 --seed 1 \
    --methods receiver,sharer,c2c,c2c-shuffled --scoring cloze-options --out "$OUT/dev/cloze-options" &
wait

# 3. the LoRA baseline on the same data, objective, batches and steps as the chosen fuser; test evaluation
c2c train recipes/default_pair_choices.yaml --method lora --output runs/default_pair_choices_lora &
BENCH=arc-challenge,arc-easy,openbookqa,mmlu-redux,ceval:val
c2c eval --fuser runs/default_pair_choices --bench "$BENCH" --split test --limit "$SAMPLE" --seed 0 \
    --methods receiver,sharer,c2c,c2c-shuffled,ensemble,routing,routing-oracle --scoring cloze --out "$OUT/cloze"
wait
c2c eval --fuser runs/default_pair_choices --lora runs/default_pair_choices_lora --bench "$BENCH" --split test \
    --limit "$SAMPLE" --seed 0 --methods receiver,sharer,t2t,c2c,c2c-shuffled,lora-receiver,ensemble,routing,routing-oracle \
    --method-limit t2t="$T2T_SAMPLE" --scoring cloze --out "$OUT/cloze"

# 4. training curves and learned gates
python benchmarks/training_report.py --c2c runs/default_pair_choices --lora runs/default_pair_choices_lora \
    --out "$OUT/training"
