#!/bin/bash
# Instruction profile of one training step per whole-model preset at one thread, split into
# the work that runs on one thread whatever RAYON_NUM_THREADS is and the work that is split
# over threads (issue #12; deterministic, so it can be run on a loaded machine). Needs
# valgrind. Steps are smaller than the presets' (see SETS) so that a run under callgrind
# takes minutes: shares, not times.
#
#   bench/serial_share.sh [BINARY] [OUTDIR] [ROWS...]   (default: target/debug/seqlab, /tmp/serial_share, all rows)
#   (MT_TOKENS=300 makes the mt rows' step smaller: a 750-token step takes over an hour under callgrind)
#
# then bench/serial_share.py OUTDIR/<row> prints the table for a row.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/seqlab}
out=${2:-/tmp/serial_share}
shift 2 || true
rows=${*:-authors-transformer mt-bible-small bert-mini char-lstm}
mkdir -p "$out"
MT_TOKENS=${MT_TOKENS:-750}
MT="--set data.train=data/sample/bible.en-es.train.tsv --set data.valid=data/sample/bible.en-es.valid.tsv --set data.test=data/sample/bible.en-es.test.tsv"
AUTHORS="--set data.train=data/sample/authors.train.tsv --set data.valid=data/sample/authors.valid.tsv --set data.test=data/sample/authors.test.tsv"
for row in $rows; do
  case $row in
    authors-transformer) args="--config configs/authors-transformer.toml $AUTHORS --set data.batch_tokens=1024" ;;
    mt-bible-small) args="--config configs/mt-bible-small.toml $MT --set data.batch_tokens=$MT_TOKENS" ;;
    mt-bible-rnn) args="--config configs/mt-bible-rnn.toml $MT --set data.batch_tokens=$MT_TOKENS" ;;
    bert-mini) args="--config configs/bert-mini.toml --set data.corpus=data/sample/kjv.en.txt --set data.batch_size=4" ;;
    char-lstm) args="--config configs/sample-char-lstm.toml" ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  # Collection is on inside the training step on the main thread and inside rayon's job
  # execution on its worker (at one thread the main thread is outside the pool and never
  # runs jobs itself); TOKENIZERS_PARALLELISM=false keeps the tokenizer training of the set-up
  # off the worker. MIMALLOC_PURGE_DELAY=-1: valgrind and mimalloc's purging do not mix.
  # shellcheck disable=SC2086
  TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 MIMALLOC_PURGE_DELAY=-1 valgrind --tool=callgrind \
    --collect-atstart=no --separate-threads=yes \
    --toggle-collect='seqlab_train::trainer::Trainer::train_step' \
    --toggle-collect='<rayon_core::job::StackJob<L,F,R> as rayon_core::job::Job>::execute' \
    --toggle-collect='<rayon_core::job::HeapJob<BODY> as rayon_core::job::Job>::execute' \
    --callgrind-out-file="$out/$row.%p" "$bin" bench model --json $args --steps 1 --warmup 0 > "$out/$row.log" 2>&1
  python3 bench/serial_share.py "$out/$row"
done
