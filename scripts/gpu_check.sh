#!/usr/bin/env bash
# The CUDA check of issue 18, for a GPU machine without a Rust toolchain (e.g. the H200 one:
# nvcc 13 and PyTorch there). Prepare HERE (with Rust):
#
#   scripts/build_cuda.sh --tests            # target-cuda/release/seqlab + the parity test binary
#   mkdir -p gpu && cp target-cuda/release/seqlab gpu/ && strip gpu/seqlab
#   cp $(ls -t target-cuda/release/deps/torch_parity-* | grep -v '\.d$' | head -1) gpu/torch_parity && strip gpu/torch_parity
#
# then carry `gpu/` (and ../shared/data/mt) to the GPU machine and run there, from the repository
# root:   scripts/gpu_check.sh [OUT]      (well under 10 minutes on an H200)
#
# It prints, and writes under OUT (default gpu-out/): the PyTorch parity cases on CUDA
# (parity.txt), seqlab's training tokens/s for mt-bible-small on CUDA (seqlab-train.json)
# against the PyTorch peer on the same GPU in fp32 and TF32 (torch-fp32.json, torch-tf32.json),
# a short real training run on CUDA and the decoded test set with its BLEU, on CUDA and, from
# the same checkpoint, on the CPU (translate-*.txt); the layer rows on CUDA (seqlab-layers.json);
# the CUDA run resumed on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-out}
BIN=${SEQLAB_BIN:-gpu/seqlab}
PARITY=${SEQLAB_PARITY_BIN:-gpu/torch_parity}
PY=${PYTHON:-python3}
STEPS=${STEPS:-60}            # timed training updates (bench) per side
TRAIN_STEPS=${TRAIN_STEPS:-400}
mkdir -p "$OUT"
fail=0
step() { echo; echo "== $* ($(date -u +%T))"; }

step "CUDA libraries"
# libcuda.so.1 is the driver's; cuBLAS / cuRAND / NVRTC 13 from $CUDA_LIBS, the toolkit, or
# PyTorch's cu13 wheels.
torch_libs=$($PY -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
for d in ${CUDA_LIBS:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $torch_libs; do
    [ -d "$d" ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
if ldd "$BIN" | grep "not found"; then
    echo "missing libraries above: set CUDA_LIBS to a folder holding them" >&2
    exit 1
fi
DATA=../shared/data/mt
[ -d "$DATA" ] || DATA=shared/data/mt
[ -f "$DATA/bible.en-es.train.tsv" ] || { echo "no $DATA/bible.en-es.train.tsv" >&2; exit 1; }
DATA_SET=(--set "data.train=\"$DATA/bible.en-es.train.tsv\"" --set "data.valid=\"$DATA/bible.en-es.valid.tsv\""
          --set "data.test=\"$DATA/bible.en-es.test.tsv\"")

step "1. PyTorch parity cases on CUDA (outputs 1e-5, gradients 1e-4)"
SEQLAB_TEST_DEVICE=cuda SEQLAB_TORCH_FIXTURES=crates/seqlab-nn/tests/golden \
    timeout 300 "$PARITY" torch_parity_all_cases --nocapture 2>&1 | tee "$OUT/parity.txt" || fail=1

step "2. seqlab: mt-bible-small training throughput on CUDA ($STEPS updates)"
timeout 300 "$BIN" bench model --config configs/mt-bible-small.toml "${DATA_SET[@]}" \
    --set 'train.device="cuda"' --steps "$STEPS" --warmup 5 --json --export "$OUT/export" \
    | tee "$OUT/seqlab-train.json" || fail=1

step "2b. seqlab: the layer rows (RNN/LSTM/GRU, encoder/decoder layer, Mamba) on CUDA"
timeout 180 "$BIN" bench layers --device cuda --steps 5 --warmup 1 --json \
    | tee "$OUT/seqlab-layers.json" || fail=1

step "3. PyTorch peer on the same GPU, fp32 and TF32"
for mode in fp32 tf32; do
    flag=(); [ $mode = tf32 ] && flag=(--tf32)
    # From the repository root: config.json's data paths are relative to it.
    timeout 300 $PY bench/peers.py model --export "$OUT/export" --device cuda "${flag[@]}" \
        --steps "$STEPS" --warmup 5 | tee "$OUT/torch-$mode.json" || fail=1
done

step "4. a short real run on CUDA ($TRAIN_STEPS updates), then the test set decoded"
rm -rf "$OUT/run"
timeout 400 "$BIN" train --config configs/mt-bible-small.toml "${DATA_SET[@]}" --device cuda \
    --max-steps "$TRAIN_STEPS" --set train.eval_every=200 --run-dir "$OUT/run" --no-progress 2>&1 | tail -5 || fail=1
for dev in cuda cpu; do
    # The checkpoint holds CPU tensors: the same run decodes on either device.
    timeout 300 "$BIN" translate --checkpoint "$OUT/run" --device $dev --tsv --input "$DATA/bible.en-es.test.tsv" \
        --decoder greedy --output "$OUT/translate-$dev.txt" 2>&1 | tail -3 || fail=1
done
cmp -s "$OUT/translate-cuda.txt" "$OUT/translate-cpu.txt" && echo "CUDA and CPU decodes are identical" \
    || echo "CUDA and CPU decodes differ (rounding can flip a few greedy choices): compare BLEU above"

step "5. the CUDA run resumed on the CPU for 2 updates (checkpoint, optimizer state and RNG move)"
timeout 180 "$BIN" train --config configs/mt-bible-small.toml "${DATA_SET[@]}" --device cpu --resume \
    --max-steps $((TRAIN_STEPS + 2)) --set train.eval_every=200 --run-dir "$OUT/run" --no-progress 2>&1 \
    | grep -E "resume|trained|error" || fail=1

step "summary"
grep -h '"units_per_s"' "$OUT"/seqlab-train.json "$OUT"/torch-*.json 2>/dev/null || true
echo "exit status $fail (0 = every step ran)"
exit $fail
