#!/usr/bin/env bash
# Issue 30: the context translator trained end to end (phase 2, self-distillation through the receiver), chosen on
# dev items, measured on test items against the receiver, the receiver reading the text, the shuffled control,
# the closed-form (ridge) translator, t2t and a LoRA receiver. Every step resumes: training from its checkpoint,
# evaluation from its per-item records. C2C_DATA_DIR must point at the shared data (SQuAD, instruction texts).
#   benchmarks/context_handoff_trained.sh [train | dev | test | table | all]   (CHOSEN=DIR: the translator for test)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C2C=".venv/bin/c2c"
OUT=results/context_handoff/trained
RIDGE=runs/context_handoff   # the closed-form fit of recipes/context_handoff.yaml (phase 2 starts from it)
step=${1:-all}
run() { [[ $step == all || $step == "$1" ]]; }
train() {  # recipe, output folder: resume an interrupted run, skip a finished one (marked by this script)
  [[ -f $2/trained_done ]] && return
  if [[ -f $2/checkpoint/trainer_state.json ]]; then $C2C train --resume "$2"; else $C2C train "$1"; fi
  touch "$2/trained_done"
}
copy() {  # from folder, to folder, bench, methods...: records of the same models on the same seeded items
  mkdir -p "$2/$3"; for m in "${@:4}"; do [[ -f $1/$3/$m.jsonl ]] && cp -n "$1/$3/$m.jsonl" "$2/$3/"; done; true
}

if run train; then  # the ridge fit (about 19 min), phase 2 from it, then continued on SQuAD train articles
  [[ -f $RIDGE/fuser.safetensors ]] || $C2C train recipes/context_handoff.yaml
  train recipes/context_handoff_distill.yaml runs/context_handoff_distill
  train recipes/context_handoff_distill_squad.yaml runs/context_handoff_distill_squad
fi

# The choice among the translators, on dev items only: the receiver's records are shared by every translator.
evaluate() {  # translator folder, output folder, scoring, benchmarks, methods, other c2c eval options...
  $C2C eval --fuser "$1" --bench "$4" --scoring "$3" --seed 0 --methods "$5" --out "$2" "${@:6}"
}
if run dev; then
  for scoring in cloze free; do
    benches=$([[ $scoring == cloze ]] && echo synthetic-1fact:dev:150,synthetic-3fact:dev:150 || echo squad:dev:100)
    evaluate $RIDGE $OUT/dev/ridge/$scoring $scoring $benches receiver,receiver-with-context,c2c-translated
    for name in distill distill_squad; do
      for bench in synthetic-1fact synthetic-3fact squad; do
        copy $OUT/dev/ridge/$scoring $OUT/dev/$name/$scoring $bench receiver receiver-with-context; done
      evaluate runs/context_handoff_$name $OUT/dev/$name/$scoring $scoring $benches \
        receiver,receiver-with-context,c2c-translated
    done
  done
fi

# Test items, once, with the translator dev chose (see results/context_handoff/trained/README.md). The cloze
# benchmarks reuse the receiver, receiver-with-context and LoRA records of results/context_handoff (the same
# seeded 500 items); the closed-form translator's free-text records are computed beside them.
CHOSEN=${CHOSEN:-runs/context_handoff_distill_squad}
CONTEXT_METHODS=receiver,receiver-with-context,c2c-translated,c2c-translated-shuffled
if run test; then
  for bench in synthetic-1fact synthetic-3fact; do
    copy results/context_handoff $OUT/test/cloze $bench receiver receiver-with-context lora-receiver; done
  evaluate $CHOSEN $OUT/test/cloze cloze synthetic-1fact:test:500,synthetic-3fact:test:500 \
    $CONTEXT_METHODS,lora-receiver
  evaluate $RIDGE $OUT/test/free free synthetic-1fact:test:200,squad:test:100 receiver,receiver-with-context
  for bench in synthetic-1fact squad; do
    copy $OUT/test/free $OUT/test/free_ridge $bench receiver receiver-with-context; done
  evaluate $RIDGE $OUT/test/free_ridge free synthetic-1fact:test:200,squad:test:100 $CONTEXT_METHODS
  train recipes/context_handoff_lora.yaml runs/context_handoff_lora   # the LoRA receiver of issue 16's recipe
  evaluate $CHOSEN $OUT/test/free free synthetic-1fact:test:200,squad:test:100 $CONTEXT_METHODS,t2t,lora-receiver \
    --method-limit t2t=40 --lora runs/context_handoff_lora
fi
if run table; then
  .venv/bin/python benchmarks/context_handoff_trained_table.py $OUT   # -> dev.md, table.md, targets.json, plot
fi
