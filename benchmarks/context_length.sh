#!/usr/bin/env bash
# Issue 32's length study (see benchmarks/context_length.py): the share of the gap the translated channel closes
# as the context grows, for the shipped translator and the long-context ridge fit (recipes/context_handoff_long.yaml)
# and the shipped translator after phase 2 on long contexts (recipes/context_handoff_distill_long.yaml) side by
# side; the receiver's baselines once. Dev articles and dev synthetic facts only. Resumes from the
# per-item records. C2C_DATA_DIR must point at the shared data (SQuAD dev).
#   benchmarks/context_length.sh [data | eval | needles | table | all]
#   (NAMES="distill_long" BASELINES=0 benchmarks/context_length.sh eval: that translator only)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
C2C=".venv/bin/c2c"
OUT=results/context_handoff/length
step=${1:-all}
NAMES=${NAMES:-shipped ridge_long distill_long}  # the translators evaluated
BASELINES=${BASELINES:-1}  # 0: the receiver's baselines are not run (they are the same for every translator)
run() { [[ $step == all || $step == "$1" ]]; }
declare -A TRANSLATORS=([shipped]=fusers/context_handoff [ridge_long]=runs/context_handoff_long
  [distill_long]=runs/context_handoff_distill_long)
SQUAD=$(for n in paragraph 512 1024 2048 4096; do printf '%s,' "$OUT/inputs/squad_$n.json"; done); SQUAD=${SQUAD%,}
SYNTHETIC=synthetic-1fact:dev:60,synthetic-4fact:dev:60,synthetic-16fact:dev:60,synthetic-64fact:dev:60
NEEDLES=$(for n in 0 512 1024 2048 4096; do printf '%s,' "$OUT/inputs/needle_$n.jsonl"; done); NEEDLES=${NEEDLES%,}

if run data; then .venv/bin/python benchmarks/context_length.py data --squad "$C2C_DATA_DIR/squad/dev-v1.1.json"; fi
if run eval; then
  if (( BASELINES )); then
    base() { $C2C eval --fuser fusers/context_handoff --seed 0 --out $OUT/runs/baselines "$@"; }
    base --bench "$OUT/inputs/squad_paragraph.json" --scoring free --methods receiver
    base --bench "$SQUAD" --scoring free --methods receiver-with-context
    base --bench $SYNTHETIC --scoring cloze --methods receiver,receiver-with-context
  fi
  for name in $NAMES; do
    $C2C eval --fuser "${TRANSLATORS[$name]}" --seed 0 --out $OUT/runs/$name --bench "$SQUAD" --scoring free \
      --methods c2c-translated
    $C2C eval --fuser "${TRANSLATORS[$name]}" --seed 0 --out $OUT/runs/$name --bench $SYNTHETIC --scoring cloze \
      --methods c2c-translated
  done
fi
if run needles; then  # a fact hidden among paragraphs: cloze, so the ceiling does not fall with the length
  if (( BASELINES )); then
    $C2C eval --fuser fusers/context_handoff --seed 0 --out $OUT/runs/baselines --bench "$OUT/inputs/needle_0.jsonl" \
      --scoring cloze --methods receiver
    $C2C eval --fuser fusers/context_handoff --seed 0 --out $OUT/runs/baselines --bench "$NEEDLES" --scoring cloze \
      --methods receiver-with-context
  fi
  for name in $NAMES; do
    $C2C eval --fuser "${TRANSLATORS[$name]}" --seed 0 --out $OUT/runs/$name --bench "$NEEDLES" --scoring cloze \
      --methods c2c-translated
  done
fi
if run table; then .venv/bin/python benchmarks/context_length.py table; fi
