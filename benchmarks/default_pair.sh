#!/usr/bin/env bash
# The default pair, trained and measured (results/default_pair/). Each step resumes where it stopped.
# Training runs one process per job with one thread each: the C2C fuser and the LoRA baseline train side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SAMPLE=${SAMPLE:-200}        # seeded sample per benchmark
T2T_SAMPLE=${T2T_SAMPLE:-40} # t2t is ~25x slower per item (the sharer writes 64 tokens): first items of the sample
OUT=results/default_pair

c2c train recipes/default_pair_mc.yaml &
c2c train recipes/default_pair_mc.yaml --method lora --output runs/default_pair_mc_lora &
wait

for SCORING in cloze-options generate; do
  METHODS=receiver,sharer,t2t,c2c,c2c-shuffled,lora-receiver
  LIMIT=$SAMPLE
  if [ "$SCORING" = cloze-options ]; then METHODS=$METHODS,ensemble,routing,routing-oracle; else LIMIT=200; fi
  c2c eval --fuser runs/default_pair_mc --lora runs/default_pair_mc_lora \
      --bench arc-challenge,arc-easy,openbookqa,mmlu-redux,ceval:val --split test --limit "$LIMIT" --seed 0 \
      --methods "$METHODS" --method-limit t2t="$T2T_SAMPLE" --scoring "$SCORING" --out "$OUT/$SCORING"
done
