#!/usr/bin/env bash
# The core experiment of docs/reproduction.md on 2 CPU cores in about 25 minutes:
# the same small encoder (configs/small.py, bf16), the same corpus (13 Gutenberg books + the KJV
# Bible), the same tokenizer and the same number of steps, trained with three objectives:
#   ratio_set (one mask ratio per sequence from 0.1..1.0), elbo (t ~ U(0, 1], 1/t weights),
#   bert (a fixed 15% of the tokens).
# Then `dlm-jax eval` on WikiText-2 test (held out: another domain), samples from the same
# prompts with the same sampler settings, and the plots/tables of scripts/reproduce_report.py.
#
#   scripts/reproduce_cpu.sh                 # the full run (writes docs/reproduction/*.png)
#   SMOKE=1 scripts/reproduce_cpu.sh         # 3-7 minutes: every stage at toy size (4 steps)
#
# Environment: OUT (run folder, default runs/reproduce or runs/reproduce-smoke), SHARED_DATA
# (default ../shared/data), STEPS (training steps per objective), EVAL_SEQUENCES (held-out
# sequences for NELBO and accuracy), FIGURES (where the PNGs go), DLM_JAX (the command).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
SHARED_DATA=${SHARED_DATA:-../shared/data}
DLM_JAX=${DLM_JAX:-dlm-jax}
PYTHON=${PYTHON:-python}
if [[ "$SMOKE" == 1 ]]; then
  OUT=${OUT:-runs/reproduce-smoke}
  STEPS=${STEPS:-4}
  EVAL_SEQUENCES=${EVAL_SEQUENCES:-16}
  NELBO_SAMPLES=2; NUM_SAMPLES=2; GEN=16
  FIGURES=${FIGURES:-$OUT}
else
  OUT=${OUT:-runs/reproduce}
  STEPS=${STEPS:-1000}
  EVAL_SEQUENCES=${EVAL_SEQUENCES:-256}
  NELBO_SAMPLES=8; NUM_SAMPLES=8; GEN=48
  FIGURES=${FIGURES:-docs/reproduction}
fi
OBJECTIVES=(ratio_set elbo bert)
# The shared training recipe: configs/small.py (a 4 x 256 ModernBERT, batch 32 x 64 tokens) with
# one tokenizer for all three runs; only objective.name differs between them.
TRAIN_FLAGS=(--config small --steps "$STEPS" --set tokenizer="$OUT/tokenizer"
             --set checkpoint_every="$STEPS" --set keep_checkpoints=1 --set log_every=10)
# Semi-autoregressive blocks of 16 tokens at temperature 0.7, top-p 0.9: the setting that writes
# the best text from the from-scratch models (docs/training.md).
SAMPLER_FLAGS=(--gen-length 48 --steps 48 --block-length 16 --temperature 0.7 --top-p 0.9 --seed 0)

mkdir -p "$OUT/corpus" "$FIGURES"
timings="$OUT/timings.tsv"
: > "$timings"
source scripts/reproduce_common.sh  # stage, prepare_corpus_and_prompts

prepare_corpus_and_prompts

total_start=$SECONDS
if [[ ! -f "$OUT/tokenizer/tokenizer.json" ]]; then
  stage tokenizer "$DLM_JAX" tokenizer train --data "$OUT/corpus" --out "$OUT/tokenizer" --vocab-size 4096
fi
for objective in "${OBJECTIVES[@]}"; do
  stage "train_$objective" "$DLM_JAX" train "${TRAIN_FLAGS[@]}" --set objective.name="$objective" \
    --data "$OUT/corpus" --workdir "$OUT/$objective"
done
for objective in "${OBJECTIVES[@]}"; do
  stage "eval_$objective" "$DLM_JAX" eval --checkpoint "$OUT/$objective" --data "$SHARED_DATA/wikitext-2-raw" \
    --seq-len 64 --max-sequences "$EVAL_SEQUENCES" --nelbo-samples "$NELBO_SAMPLES" --samples "$NUM_SAMPLES" \
    --gen-length "$GEN" --steps "$GEN" --temperature 1.0 --json
  tail -n 1 "$OUT/eval_$objective.log" > "$OUT/$objective/eval.json"
  stage "generate_$objective" "$DLM_JAX" generate --checkpoint "$OUT/$objective" \
    --prompt-file "$OUT/prompts.txt" "${SAMPLER_FLAGS[@]}" --json
  grep '^{' "$OUT/generate_$objective.log" > "$OUT/$objective/samples.jsonl"
done
printf 'total\t%d\n' $((SECONDS - total_start)) | tee -a "$timings"

DOC_FLAGS=()
[[ "$SMOKE" == 1 ]] || DOC_FLAGS=(--doc docs/reproduction.md)  # the full run updates the page
"$PYTHON" scripts/reproduce_report.py "$OUT" --figures "$FIGURES" --prompts "$OUT/prompts.txt" \
  --sampler "${SAMPLER_FLAGS[*]}" "${DOC_FLAGS[@]}" > "$OUT/report.md"
echo "report: $OUT/report.md; figures: $FIGURES"
