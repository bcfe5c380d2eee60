#!/usr/bin/env bash
# The default pair, trained and measured (results/default_pair/README.md). Each step resumes where it stopped.
# One thread per job; two jobs side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SAMPLE=${SAMPLE:-500}        # seeded sample per benchmark (OpenBookQA test has 500: all of it)
T2T_SAMPLE=${T2T_SAMPLE:-20} # t2t items run one at a time (its latency); the rest have the sharer's texts batched
OUT=results/default_pair
BENCH=arc-challenge,arc-easy,openbookqa,mmlu-redux,ceval:val

# 1. two fusers with the choice objective: the question alone (cloze, shipped) and the options listed; their
#    held-out accuracy (metrics.jsonl, eval_accuracy) picks the protocol. (The session stopped the second at step 200.)
c2c train recipes/default_pair_choices.yaml &
c2c train recipes/default_pair_choices_options.yaml &
wait
# 2. the LoRA baseline (same data, objective, batches, steps) beside the fuser's test evaluation
c2c train recipes/default_pair_choices.yaml --method lora --output runs/default_pair_choices_lora &
c2c eval --fuser runs/default_pair_choices --bench "$BENCH" --split test --limit "$SAMPLE" --seed 0 \
    --methods receiver,sharer,c2c,c2c-shuffled,ensemble,routing,routing-oracle --scoring cloze --out "$OUT/cloze"
wait
c2c eval --fuser runs/default_pair_choices --lora runs/default_pair_choices_lora --bench "$BENCH" --split test \
    --limit "$SAMPLE" --seed 0 --methods receiver,sharer,t2t,c2c,c2c-shuffled,lora-receiver,ensemble,routing,routing-oracle \
    --method-limit t2t="$T2T_SAMPLE" --scoring cloze --out "$OUT/cloze"
python benchmarks/t2t_batching.py --eval "$OUT/cloze" --out "$OUT/t2t_batching.json"
c2c eval --fuser runs/default_pair_choices --lora runs/default_pair_choices_lora --bench "$BENCH" --split test \
    --limit "$SAMPLE" --seed 0 --methods receiver,sharer,t2t,c2c,c2c-shuffled,lora-receiver,ensemble,routing,routing-oracle \
    --t2t-batch 16 --scoring cloze --out "$OUT/cloze"
cp "$OUT/cloze/summary.json" "$OUT/summary.json"
# 3. training curves, learned gates, and which gates the fuser needs (dev split)
python benchmarks/training_report.py --c2c runs/default_pair_choices --lora runs/default_pair_choices_lora \
    --out "$OUT/training"
python benchmarks/gate_ablation.py --fuser runs/default_pair_choices --bench arc-easy --split dev --limit 150
mkdir -p fusers/default_pair
cp runs/default_pair_choices/{c2c_config.json,fuser.safetensors,metrics.jsonl,train_config.json} fusers/default_pair/

# 4. round 3 (results/default_pair/README.md "Round 3"): the instruction fuser behind `c2c generate` / `c2c chat`,
#    the sharer-only ablation (receiver_input: false), and the reverse pair, two at a time
c2c train recipes/default_pair_instruct.yaml &
{ c2c train recipes/reverse_pair_choices.yaml; c2c train recipes/default_pair_choices_sharer_only.yaml; } &
wait
mkdir -p fusers/default_pair_chat
cp runs/default_pair_instruct/{c2c_config.json,fuser.safetensors,metrics.jsonl,train_config.json} fusers/default_pair_chat/
c2c train recipes/default_pair_instruct.yaml --method lora --output runs/default_pair_instruct_lora  # (sessions 5-6)
python benchmarks/training_report.py --c2c runs/default_pair_instruct --lora runs/default_pair_instruct_lora \
    --baseline --shuffled-control --out "$OUT/round3/training_instruct"
python benchmarks/training_report.py --c2c runs/default_pair_choices_sharer_only --out "$OUT/round3/training_sharer_only"
python benchmarks/training_report.py --c2c runs/reverse_pair_choices --baseline --out results/reverse_pair/training
# the reverse pair on the test splits (Gemma receiver <- SmolLM2 sharer), a seeded 100 items per benchmark
c2c train recipes/reverse_pair_choices.yaml --method lora --output runs/reverse_pair_choices_lora  # (session 4)
c2c eval --fuser runs/reverse_pair_choices --lora runs/reverse_pair_choices_lora --bench "$BENCH" --split test \
    --limit "${REVERSE_SAMPLE:-100}" --seed 0 --methods receiver,sharer,c2c,c2c-shuffled,lora-receiver,ensemble,routing,routing-oracle \
    --scoring cloze --out results/reverse_pair/cloze
# the ablation on dev splits: does the fuser that reads only the sharer gain over its shuffled control?
for run in default_pair_choices default_pair_choices_sharer_only; do
    c2c eval --fuser "runs/$run" --bench arc-easy --split dev --limit 150 --seed 0 \
        --methods receiver,sharer,c2c,c2c-shuffled --scoring cloze --out "$OUT/round3/dev_$run" &
done
wait
# the generate protocol (the paper's prompt, the answer letter read from free text) with the instruction fuser
c2c eval --fuser runs/default_pair_instruct --lora runs/default_pair_instruct_lora --bench "$BENCH" --split test \
    --limit "${GENERATE_SAMPLE:-200}" --seed 0 --methods receiver,sharer,c2c,c2c-shuffled,lora-receiver \
    --scoring generate --max-new-tokens 16 --out "$OUT/generate"

# 5. round 4 (results/default_pair/README.md "Round 4"): the sharer's own ranking as the target (distill_weight: 1),
#    with the (sharer, receiver) input, the sharer-only input and deterministic gates; dev split, one job at a time
for run in default_pair_choices_distill default_pair_choices_distill_sharer_only default_pair_choices_distill_gates; do
    c2c train "recipes/$run.yaml"
    c2c eval --fuser "runs/$run" --bench arc-easy --split dev --limit 150 --seed 0 \
        --methods receiver,sharer,c2c,c2c-shuffled --scoring cloze --out "$OUT/round4/dev_${run#default_pair_choices_}"
done
python benchmarks/training_report.py --c2c runs/default_pair_choices_distill --shuffled-control \
    --out "$OUT/round4/training_distill"
for run in distill_sharer_only distill_gates; do
    python benchmarks/training_report.py --c2c "runs/default_pair_choices_$run" --out "$OUT/round4/training_$run"
done
for run in round3/dev_default_pair_choices round3/dev_default_pair_choices_sharer_only round4/dev_distill \
           round4/dev_distill_sharer_only round4/dev_distill_gates; do
    python benchmarks/score_shift.py "$OUT/$run"
done
