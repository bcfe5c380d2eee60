#!/usr/bin/env bash
# Issue 34, knowledge handoff: every step after the sharer's build (python benchmarks/knowledge_sharer.py build), in
# the order of docs/knowledge_handoff.md. Each step resumes or is skipped when done (training from its checkpoint,
# evaluation from its per-item records), so an interrupted run continues with the same command.
#   benchmarks/knowledge_handoff.sh [cloze | kv_probe | train | eval | position_free | ahead | self | scale | table | all]
# Settings are chosen on the dev sets (dev, novel_dev); the test sets (held_out, novel_values) are read only by
# `eval` and `scale`. Writes results/knowledge_handoff/ (see its README).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=.venv/bin/python
C2C=.venv/bin/c2c
RUNS=runs/knowledge_handoff
E=$RUNS/encyclopedia
OUT=results/knowledge_handoff
TESTS=$E/held_out.jsonl,$E/novel_values.jsonl
step=${1:-all}
run() { [[ $step == all || $step == "$1" ]]; }
train() {  # recipe, output folder, extra arguments: resume an interrupted run, skip a finished one
  local recipe=$1 folder=$2; shift 2
  [[ -f $folder/knowledge_done ]] && return
  if [[ -f $folder/checkpoint/trainer_state.json ]]; then $C2C train --resume "$folder"
  else $C2C train "$recipe" --output "$folder" "$@"; fi
  touch "$folder/knowledge_done"
}
[[ -f $RUNS/sharer/knowledge_sharer.json ]] || { echo "build the sharer first: $PY benchmarks/knowledge_sharer.py build" >&2; exit 1; }
mkdir -p $OUT

if run cloze; then  # the sharer knows, the receiver does not (200 questions a set; the test sets in full in eval)
  [[ -f $OUT/cloze_sharer.json ]] || $PY benchmarks/knowledge_sharer.py probe --model $RUNS/sharer --limit 200 \
    --encyclopedia $E --out $OUT/cloze_sharer.json
  [[ -f $OUT/cloze_receiver.json ]] || $PY benchmarks/knowledge_sharer.py probe --model smollm2-135m-instruct \
    --limit 200 --encyclopedia $E --out $OUT/cloze_receiver.json
fi
if run kv_probe; then
  [[ -f $OUT/probe/probe.json ]] || $PY benchmarks/knowledge_probe.py --model sharer=$RUNS/sharer \
    --model receiver=smollm2-135m-instruct --encyclopedia $E --out $OUT/probe
fi
if run train; then
  train recipes/knowledge_handoff/c2c.yaml $RUNS/c2c
  train recipes/knowledge_handoff/lora.yaml $RUNS/lora
fi
if run eval; then
  $C2C eval --fuser $RUNS/c2c --lora $RUNS/lora --bench $TESTS --scoring cloze \
    --methods receiver,sharer,c2c,c2c-shuffled,lora-receiver,t2t,routing-oracle --t2t-tokens 16 --t2t-batch 8 \
    --batch-size 8 \
    --out $OUT/eval
fi
variant() {  # the main fuser's recipe with one change (recipes/knowledge_handoff/NAME.yaml): NAME, methods to score
  train recipes/knowledge_handoff/$1.yaml $RUNS/c2c_$1
  $C2C eval --fuser $RUNS/c2c_$1 --bench $TESTS --scoring cloze --methods $2 --batch-size 8 --out $OUT/$1
}
run position_free && variant position_free c2c,c2c-shuffled  # position-free keys
run ahead && variant ahead c2c,c2c-shuffled  # each fused position reads the sharer one token ahead
if run self; then  # a diagnostic: the receiver's own model, taught the encyclopedia, as the sharer (same tokenizer
  # and shapes: no translation between models to learn), with the paper's alignment and reading ahead
  SELF=runs/knowledge_handoff_self
  [[ -f $SELF/sharer/knowledge_sharer.json ]] || $PY benchmarks/knowledge_sharer.py build \
    --model smollm2-135m-instruct --epochs 3 --out $SELF $([[ -d $SELF/sharer_lora ]] && echo --resume)
  [[ -f $OUT/cloze_self_sharer.json ]] || $PY benchmarks/knowledge_sharer.py probe --model $SELF/sharer --limit 200 \
    --encyclopedia $E --out $OUT/cloze_self_sharer.json
  [[ -f $OUT/self_probe/probe.json ]] || $PY benchmarks/knowledge_probe.py --model self_sharer=$SELF/sharer \
    --encyclopedia $E --out $OUT/self_probe
  if $PY -c "import json, sys; sets = json.load(open(sys.argv[1]))['sets'].values()
sys.exit(min(s['accuracy'] for s in sets) < 0.9)" $OUT/cloze_self_sharer.json; then
    variant self sharer,c2c,c2c-shuffled  # a sharer of its own: its accuracy scored beside the fusers
    variant self_ahead sharer,c2c,c2c-shuffled
  else  # 3 epochs at r 16 (the Gemma sharer's settings but one epoch) reached 34-38%: nothing for a fuser to carry
    echo "the taught receiver knows too little (cloze below 90% on a set of $OUT/cloze_self_sharer.json): no" \
      "fuser trained; rebuild $SELF (delete it) with more --epochs or a larger --r" >&2
  fi
fi
if run scale; then  # the gain against the number of training questions and the fuser's size, on held_out only
  scale() {  # name, extra training arguments
    local name=$1; shift
    train recipes/knowledge_handoff/c2c.yaml $RUNS/c2c_$name "$@"
    $C2C eval --fuser $RUNS/c2c_$name --bench $E/held_out.jsonl --scoring cloze --methods c2c,c2c-shuffled \
      --batch-size 8 --out $OUT/scale/$name
  }
  scale n250 --max-examples 250
  scale n500 --max-examples 500
  scale h32 --set fuser.hidden_size=32 --set fuser.intermediate_size=32
  scale n1000 --max-examples 1000
  scale h512 --set fuser.hidden_size=512 --set fuser.intermediate_size=512
fi
if run table; then
  $PY benchmarks/knowledge_handoff_table.py $OUT
fi
true
