#!/usr/bin/env bash
# Issue 15, part 1: what the sectioned prefill changes for the shipped fusers. ARC-Easy dev (150 items, seed 0,
# cloze), c2c and c2c-shuffled, "before" (c2c at BEFORE, default the commit before the fix: only the last prompt
# token read the fused cache) and "after" (c2c at AFTER, default HEAD: every token after a fused run reads it).
# Each side runs from a copy of its commit's c2c package; the receiver is the same model on the same items in
# both, so "before" reuses "after"'s records.
#   benchmarks/prefill_sections.sh [BEFORE [AFTER]]    (C2C_DATA_DIR must hold arc/; ~25 min on one thread)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
root=$PWD
OUT=$root/results/default_pair/prefill_sections
checkout() { local dir; dir=$(mktemp -d); git archive "$1" c2c | tar -x -C "$dir"; echo "$dir"; }
before=$(checkout "${1:-c3eb6ee}")
after=$(checkout "${2:-HEAD}")
c2c_at() { (cd "$1" && "$root/.venv/bin/python" -c "from c2c.cli import main; main()" "${@:2}"); }
for fuser in default_pair default_pair_chat; do
  args=(eval --fuser "$root/fusers/$fuser" --bench arc-easy --split dev --limit 150 --seed 0 --scoring cloze)
  c2c_at "$after" "${args[@]}" --methods receiver,c2c,c2c-shuffled --out "$OUT/$fuser/after"
  mkdir -p "$OUT/$fuser/before/arc-easy"
  cp -n "$OUT/$fuser/after/arc-easy/receiver.jsonl" "$OUT/$fuser/before/arc-easy/"
  c2c_at "$before" "${args[@]}" --methods receiver,c2c,c2c-shuffled --out "$OUT/$fuser/before"
done
rm -rf "$before" "$after"
.venv/bin/python benchmarks/prefill_sections_table.py "$OUT"   # -> table.md, table.json
