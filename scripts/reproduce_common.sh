# Sourced by scripts/reproduce_cpu.sh and scripts/reproduce_pretrained.sh after they set OUT,
# SHARED_DATA, PYTHON and timings: the staged-command runner, the shared corpus and the prompts.

stage() {  # stage NAME COMMAND...: run, time, and log to $OUT/NAME.log
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1 || { echo "stage $name failed; see $OUT/$name.log"; tail -5 "$OUT/$name.log"; exit 1; }
  printf '%s\t%d\n' "$name" $((SECONDS - start)) | tee -a "$timings"
}

prepare_corpus_and_prompts() {  # the 13 Gutenberg books and the KJV, one paragraph per line; 4 prompts
  "$PYTHON" scripts/prepare_corpus.py "$OUT/corpus" "$SHARED_DATA"/gutenberg/*.txt "$SHARED_DATA"/kjv/kjv.txt
  cat > "$OUT/prompts.txt" <<'PROMPTS'
And God said unto Moses,
It was a fine morning, and Emma
The whale
She looked at him and said that
PROMPTS
}
