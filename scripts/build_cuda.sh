#!/usr/bin/env bash
# Builds `seqlab` with CUDA (`--features cuda`: candle's cuBLAS / cuRAND / NVRTC backend and its
# PTX kernels) on a machine WITHOUT a GPU and without a system CUDA toolkit. The compiler and
# headers come from PyPI (CUDA 13.0, the oldest 13.x, so the PTX loads under any CUDA 13
# driver), the compute capability is set explicitly (Hopper, sm_90, unless CUDA_COMPUTE_CAP is
# set), and the driver library libcuda.so.1, which only a GPU machine has, is replaced at link
# time by a stub generated from cuda.h (at run time the real driver is loaded).
#
#   scripts/build_cuda.sh                 # → target-cuda/release/seqlab
#   SEQLAB_CUDA_VENV=/opt/cu13 scripts/build_cuda.sh --tests   # also the test binaries
#
# Runtime libraries the binary needs (ldd target-cuda/release/seqlab): libcuda.so.1 (the
# NVIDIA driver, on the GPU machine), libcublas.so.13, libcublasLt.so.13, libcudart.so.13
# (candle's statically compiled MoE kernels), libcurand.so.10, libnvrtc.so.13 (+ libnvrtc-builtins.so.13.0). They are the pip packages below; on the GPU
# machine point LD_LIBRARY_PATH at a folder holding them (PyTorch's cu13 wheels ship them
# too: …/site-packages/nvidia/cu13/lib) — scripts/gpu_check.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SEQLAB_CUDA_VENV:-/work/venv-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv "$VENV"
fi
# cudarc 0.19 (candle-core 0.11.1) knows CUDA 11.4 – 13.4; nvcc's version picks its bindings.
# nvcc's own dependencies (nvvm = cicc, crt headers) are pinned too: a newer cicc writes PTX
# that the 13.0 ptxas rejects ("Unsupported .version 9.5").
"$VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.*" "nvidia-cublas==13.0.*" \
    "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
ROOT=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$ROOT/bin/nvcc" ] || { echo "no nvcc under $ROOT" >&2; exit 1; }

# The linker wants unversioned names (-lcublas ...); the wheels ship only the sonames.
for l in cublas cublasLt cudart; do ln -sf "lib$l.so.13" "$ROOT/lib/lib$l.so"; done
ln -sf libcurand.so.10 "$ROOT/lib/libcurand.so"
ln -sf libnvrtc.so.13 "$ROOT/lib/libnvrtc.so"
# libcuda stub: every driver entry point of cuda.h (after the preprocessor's _v2 renames).
if [ ! -e "$ROOT/lib/libcuda.so" ]; then
    tmp=$(mktemp -d)
    gcc -E -P -I"$ROOT/include" "$ROOT/include/cuda.h" |
        grep -oE '\bCUresult +cu[A-Za-z0-9_]+ *\(' | sed -E 's/CUresult +//; s/ *\(//' | sort -u |
        sed -E 's/.*/int &(void) { return 999; }/' > "$tmp/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/libcuda.so" "$tmp/stub.c"
    rm -r "$tmp"
fi

export CUDA_ROOT=$ROOT CUDA_PATH=$ROOT PATH="$ROOT/bin:$PATH"
export LD_LIBRARY_PATH="$ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A separate target folder: the CUDA build changes candle-core's features, so sharing target/
# would rebuild every crate each time one switches between the CPU and the CUDA build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
if [ "${1:-}" = "--tests" ]; then
    shift
    # The parity test binary, run on the GPU with SEQLAB_TEST_DEVICE=cuda (scripts/gpu_check.sh).
    nice -n "${NICE:-10}" cargo test --release --features seqlab-nn/cuda -p seqlab-nn --test torch_parity --no-run "$@"
fi
nice -n "${NICE:-10}" cargo build --release --features cuda -p seqlab-cli "$@"
echo "built $CARGO_TARGET_DIR/release/seqlab (CUDA 13.0, sm_$CUDA_COMPUTE_CAP)"
