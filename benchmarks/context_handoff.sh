#!/usr/bin/env bash
# Context handoff, every number in results/context_handoff/ (its README): fit the translators, train the LoRA
# baseline and the fused-prompt fuser, evaluate the ladder (Identical pair, then the default pair), build the
# ladder table. Each step resumes where it stopped (c2c eval reuses its per-item records). C2C_DATA_DIR must point
# at the shared data (ARC evidence, Tipsheets, instruction texts); the synthetic benchmarks need none.
# One CPU thread per job; the two halves of a step marked `&` run side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C2C=".venv/bin/c2c"
OUT=results/context_handoff
step=${1:-all}
run() { [[ $step == all || $step == "$1" ]]; }

if run fit; then  # about 19 + 18 + 7 + 6 + 20 minutes
  $C2C train recipes/context_handoff.yaml &            # -> runs/context_handoff, shipped as fusers/context_handoff
  $C2C train recipes/context_handoff_identical.yaml    # -> runs/context_handoff_identical
  wait
  $C2C train recipes/context_handoff_lora.yaml &       # -> runs/context_handoff_lora (no context: the fair baseline)
  $C2C train recipes/context_handoff_fused.yaml        # -> runs/context_handoff_fused (the paper's channel)
  wait
  $C2C train recipes/context_handoff_more_text.yaml    # -> runs/context_handoff_more_text (fitting-data ablation)
  mkdir -p fusers/context_handoff
  cp runs/context_handoff/{c2c_config.json,fuser.safetensors,fit_report.json,train_config.json} fusers/context_handoff/
fi

if run default; then  # the default pair, every method and control; about 3 hours on one thread
  $C2C eval --fuser fusers/context_handoff --lora runs/context_handoff_lora --scoring cloze --seed 0 --skip-bad \
    --bench synthetic-1fact:test:500,synthetic-3fact:test:500,arc-easy-evidence:test:500,tipsheets:test:100 \
    --methods receiver,receiver-with-context,c2c-translated,c2c-translated-shuffled,lora-receiver,sharer-with-context,receiver-enriched,t2t \
    --method-limit t2t=40 --out $OUT
fi

# The other rungs reuse the default run's receiver records (the same model on the same seeded items).
reuse() { mkdir -p "$1/synthetic-1fact"; for m in "${@:2}"; do cp -n "$OUT/synthetic-1fact/$m.jsonl" "$1/synthetic-1fact/"; done; }
if run identical; then
  reuse $OUT/identical receiver receiver-with-context
  $C2C eval --fuser runs/context_handoff_identical --scoring cloze --seed 0 --bench synthetic-1fact:test:500 \
    --methods receiver,receiver-with-context,c2c-translated,c2c-translated-shuffled --out $OUT/identical
fi
if run fused; then
  reuse $OUT/fused_prompt receiver lora-receiver
  $C2C eval --fuser runs/context_handoff_fused --lora runs/context_handoff_lora --scoring cloze --seed 0 \
    --bench synthetic-1fact:test:500 --methods receiver,c2c,c2c-shuffled,lora-receiver --out $OUT/fused_prompt
fi
if run more_text; then
  reuse $OUT/more_text receiver receiver-with-context
  $C2C eval --fuser runs/context_handoff_more_text --scoring cloze --seed 0 --bench synthetic-1fact:test:500 \
    --methods receiver,receiver-with-context,c2c-translated,c2c-translated-shuffled --out $OUT/more_text
fi
if run table; then
  .venv/bin/python benchmarks/context_handoff_table.py $OUT   # -> ladder.md, targets.json
fi
