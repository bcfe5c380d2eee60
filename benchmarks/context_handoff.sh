#!/usr/bin/env bash
# Context handoff, every number in results/context_handoff/: fit the translators, train the LoRA baseline, evaluate
# the ladder (Identical pair, then the default pair). C2C_DATA_DIR must point at the shared data (ARC evidence,
# Tipsheets, instruction texts); the synthetic benchmarks need no data. One CPU thread per job.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C2C=".venv/bin/c2c"
step=${1:-all}

if [[ $step == all || $step == fit ]]; then
  $C2C train recipes/context_handoff.yaml            # -> runs/context_handoff (shipped as fusers/context_handoff)
  $C2C train recipes/context_handoff_identical.yaml  # -> runs/context_handoff_identical
  $C2C train recipes/context_handoff_lora.yaml       # -> runs/context_handoff_lora
  mkdir -p fusers/context_handoff
  cp runs/context_handoff/{c2c_config.json,fuser.safetensors,fit_report.json,train_config.json} fusers/context_handoff/
fi

METHODS=receiver,receiver-with-context,sharer-with-context,t2t,c2c-translated,c2c-translated-shuffled,lora-receiver,receiver-enriched
if [[ $step == all || $step == default ]]; then
  $C2C eval --fuser fusers/context_handoff --lora runs/context_handoff_lora --scoring cloze --seed 0 \
    --bench synthetic-1fact:test:500,synthetic-3fact:test:200,synthetic-5fact:test:150,arc-easy-evidence:test:100,tipsheets:test:150 \
    --methods $METHODS --method-limit t2t=16 --out results/context_handoff
fi
if [[ $step == all || $step == identical ]]; then
  $C2C eval --fuser runs/context_handoff_identical --scoring cloze --seed 0 \
    --bench synthetic-1fact:test:500,synthetic-3fact:test:200 \
    --methods receiver,receiver-with-context,c2c-translated,c2c-translated-shuffled --out results/context_handoff/identical
fi
