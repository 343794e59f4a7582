#!/bin/bash
# 1 rank x 2 threads vs 2 ranks x 1 thread, alternating, 3 runs each (issue 15 benchmark)
cd "$(dirname "$0")/.."
B=target/release/seqlab
MPI="mpirun --oversubscribe --bind-to none --mca btl_vader_single_copy_mechanism none --mca mpi_yield_when_idle 1 -x RAYON_NUM_THREADS=1 -np 2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LM="--config configs/sample-char-lstm.toml --set train.max_steps=40 --set train.eval_every=100000 --set train.log_every=1 --set train.progress=false"
tps() { python3 -c "
import json,sys,statistics
r=[json.loads(l) for l in open('$1/metrics.jsonl')]
t=[x['tokens_per_s'] for x in r if x.get('split')=='train' and x['step']>5 and 'tokens_per_s' in x]
print(round(statistics.median(t)))"; }
for i in 1 2 3; do
  echo "load $(cut -d' ' -f1 /proc/loadavg)"
  rm -rf /tmp/sc1 /tmp/sc2
  RAYON_NUM_THREADS=2 $B train $LM --run-dir /tmp/sc1 >/dev/null 2>&1; echo "lm 1x2 run $i: $(tps /tmp/sc1) tok/s"
  $MPI $B train $LM --run-dir /tmp/sc2 >/dev/null 2>&1; echo "lm 2x1 run $i: $(tps /tmp/sc2) tok/s"
  $B w2v train --threads 2 --epochs 3 --input data/sample/kjv.en.txt --output /tmp/v1.txt 2>&1 | grep -o "[0-9,.]* words/s" | tail -1 | sed "s/^/w2v 1x2 run $i: /"
  $MPI $B w2v train --threads 1 --epochs 3 --sync-words 5000 --input data/sample/kjv.en.txt --output /tmp/v2.txt 2>&1 | grep -o "rank . of 2: trained [0-9]* words, [0-9]* words/s" | sed "s/^/w2v 2x1 run $i: /"
done
