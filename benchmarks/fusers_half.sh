#!/usr/bin/env bash
# Issue 35: the shipped fusers stored in half precision (fuser.storage_dtype float16; they compute in float32 as
# before) give the same answers as their float32 weights did: c2c on the items of their committed records, compared
# item by item with benchmarks/precision_compare.py (same_pick, the paired difference). ARC-Easy dev (150 items,
# seed 0, cloze) for both fusers (their float32 records: results/default_pair/prefill_sections/FUSER/after), and for
# default_pair 150 of its ARC-Easy test items (its float32 records: results/default_pair/cloze).
#   C2C_DATA_DIR=DIR benchmarks/fusers_half.sh        (DIR holds arc/; about 10 minutes on 2 threads)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=${PY:-.venv/bin/python}
OUT=results/default_pair/half
c2c() { "$PY" -m c2c.cli "$@"; }
for fuser in default_pair default_pair_chat; do
  c2c eval --fuser fusers/$fuser --bench arc-easy --split dev --limit 150 --seed 0 --scoring cloze --methods c2c \
    --out $OUT/$fuser/dev
  "$PY" benchmarks/precision_compare.py results/default_pair/prefill_sections/$fuser/after $OUT/$fuser/dev arc-easy c2c
done
c2c eval --fuser fusers/default_pair --bench arc-easy --split test --limit 500 --method-limit c2c=150 --seed 0 \
  --scoring cloze --methods c2c --out $OUT/default_pair/test
"$PY" benchmarks/precision_compare.py results/default_pair/cloze $OUT/default_pair/test arc-easy c2c
"$PY" benchmarks/pack_records.py $OUT
