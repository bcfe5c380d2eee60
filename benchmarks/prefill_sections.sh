#!/usr/bin/env bash
# Issue 15, part 1: what the sectioned prefill changes for the shipped fusers. ARC-Easy dev (150 items, seed 0,
# cloze), c2c and c2c-shuffled, "before" (c2c at the commit given, default the one before the fix: only the last
# prompt token read the fused cache) and "after" (this checkout: every token after a fused run reads it).
# The receiver's records are the same model on the same items in both, so "before" reuses "after"'s.
#   benchmarks/prefill_sections.sh [BEFORE_COMMIT]       (C2C_DATA_DIR must hold arc/; ~25 min on one thread)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
before=${1:-c3eb6ee}
OUT=results/default_pair/prefill_sections
old=$(mktemp -d)
git archive "$before" c2c | tar -x -C "$old"
for fuser in default_pair default_pair_chat; do
  args=(eval --fuser "$PWD/fusers/$fuser" --bench arc-easy --split dev --limit 150 --seed 0 --scoring cloze)
  .venv/bin/c2c "${args[@]}" --methods receiver,c2c,c2c-shuffled --out "$OUT/$fuser/after"
  mkdir -p "$OUT/$fuser/before/arc-easy"
  cp -n "$OUT/$fuser/after/arc-easy/receiver.jsonl" "$OUT/$fuser/before/arc-easy/"
  (cd "$old" && "$OLDPWD/.venv/bin/python" -c "from c2c.cli import main; main()" "${args[@]}" \
     --methods receiver,c2c,c2c-shuffled --out "$OLDPWD/$OUT/$fuser/before")
done
rm -rf "$old"
