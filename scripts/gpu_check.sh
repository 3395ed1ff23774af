#!/usr/bin/env bash
# The GPU check, for the bare, offline GPU machine (CUDA toolkit, CMake, a compiler; no -dev packages).
#   here, once:       scripts/gpu_check.sh --fetch      downloads the .deb files the check needs into gpu-debs/
#   on the GPU box:   scripts/gpu_check.sh              unpacks them into a local prefix, builds for sm_90,
#                                                       runs the CUDA tests and prints the benchmark table,
#                                                       then the NCCL communicator under mpirun -np 1
set -euo pipefail
cd "$(dirname "$0")/.."
debs=gpu-debs

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$debs"
  (cd "$debs" && apt-get download libgtest-dev googletest >/dev/null)
  ls -1 "$debs"
  exit 0
fi

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not available"
nvcc --version | tail -1
nproc

prefix="$PWD/.gpu-prefix"
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90)
if ! [ -f /usr/include/gtest/gtest.h ]; then
  [ -d "$debs" ] || { echo "error: scripts/gpu_check.sh: no GoogleTest here and no $debs/ (run --fetch on the dev machine)" >&2; exit 2; }
  mkdir -p "$prefix"
  for d in "$debs"/*.deb; do dpkg -x "$d" "$prefix"; done
  cmake_args+=(-DGTest_ROOT="$prefix/usr" -DCMAKE_PREFIX_PATH="$prefix/usr")
fi

echo "== build (sm_90)"
cmake -S . -B build-gpu "${cmake_args[@]}" >/dev/null
cmake --build build-gpu -j "$(nproc)" 2>&1 | grep -E "error|warning" || true
cmake --build build-gpu -j "$(nproc)" >/dev/null

echo "== tests"
(cd build-gpu && ctest --output-on-failure -j "$(nproc)" 2>&1 | tail -25)

echo "== benchmark"
build-gpu/tools/llm-bench kernels --threads "$(nproc)" || true

# The NCCL communicator end to end with world size 1 (it bootstraps over MPI, so it is built only
# where an MPI library is installed: Debian's libopenmpi-dev openmpi-bin).
echo "== NCCL under mpirun -np 1"
if command -v mpirun >/dev/null; then
  mpi=(mpirun --allow-run-as-root --oversubscribe -np 1)
  "${mpi[@]}" build-gpu/tests/nccl_test 2>&1 | tail -4 || true
  "${mpi[@]}" build-gpu/tools/llm-bench allreduce --backend nccl || true
else
  echo "skipped: no mpirun on this machine, so the NCCL communicator was not built"
fi
