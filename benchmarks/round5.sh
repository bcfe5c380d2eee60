#!/usr/bin/env bash
# Issue 20: the paper's setting with the runtime fixed. Two retrains of the shipped choice fuser's recipe and the
# Identical control, each evaluated on round 2's five test samples (500 items, seed 0, cloze) with c2c and
# c2c-shuffled; the receiver, sharer and LoRA records of round 2 (results/default_pair/cloze) are the same
# models on the same items and are reused. Every step resumes (training from its checkpoint with --resume,
# evaluation from its per-item records).
#   benchmarks/round5.sh [train_position_free | train_identical | eval_position_free | eval_identical | all]
# The "fixed prefill" retrain is the shipped fuser itself: its recipe renders without a chat template, so its
# fused run always ends at the last prompt token and the sectioned prefill runs exactly the old single pass
# (results/default_pair/prefill_sections: not one score of fusers/default_pair changed).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C2C=".venv/bin/c2c"
OUT=results/default_pair/round5
step=${1:-all}
run() { [[ $step == all || $step == "$1" ]]; }
train() {  # recipe, output folder: resume an interrupted run, skip a finished one (marked by this script)
  [[ -f $2/round5_done ]] && return
  if [[ -f $2/checkpoint/trainer_state.json ]]; then $C2C train --resume "$2"; else $C2C train "$1"; fi
  touch "$2/round5_done"
}
evaluate() {  # fuser folder, output folder
  for bench in arc-challenge arc-easy openbookqa mmlu-redux ceval; do
    mkdir -p "$2/$bench"
    for m in receiver sharer lora-receiver; do cp -n "results/default_pair/cloze/$bench/$m.jsonl" "$2/$bench/"; done
  done
  $C2C eval --fuser "$1" --bench arc-challenge,arc-easy,openbookqa,mmlu-redux,ceval:val --split test --limit 500 \
    --seed 0 --methods receiver,sharer,lora-receiver,c2c,c2c-shuffled --scoring cloze --out "$2"
}
run train_position_free && train recipes/default_pair_choices_position_free.yaml runs/default_pair_choices_position_free
run train_identical && train recipes/default_pair_choices_identical.yaml runs/default_pair_choices_identical
run eval_position_free && evaluate runs/default_pair_choices_position_free $OUT/position_free
run eval_identical && evaluate runs/default_pair_choices_identical $OUT/identical
true
