#!/usr/bin/env bash
# The GPU check, for the bare, offline GPU machine (CUDA toolkit, CMake, a compiler; no -dev packages).
#   here, once:       scripts/gpu_check.sh --fetch      downloads the .deb files the check needs into gpu-debs/
#   on the GPU box:   scripts/gpu_check.sh [LOG]        unpacks them into a local prefix, builds for sm_90,
#                                                       runs every CUDA test, the GPU benchmarks and the
#                                                       NCCL communicator and GPU data-parallel training
#                                                       under mpirun -np 1
# The full log goes to LOG (or $GPU_CHECK_LOG, default gpu-check.log); the terminal gets one line per
# stage and, last, the short table: test results and the benchmark rows.
set -uo pipefail
cd "$(dirname "$0")/.."
debs=gpu-debs

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$debs"
  (cd "$debs" && apt-get download libgtest-dev googletest >/dev/null)
  ls -1 "$debs"
  exit 0
fi

log=$(realpath -m "${1:-${GPU_CHECK_LOG:-gpu-check.log}}")
: >"$log"
start=$SECONDS
stage() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$log"; }

stage machine
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not available"
  nvcc --version | tail -1; echo "$(nproc) CPU cores"; } >>"$log" 2>&1

prefix="$PWD/.gpu-prefix"
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90)
if ! [ -f /usr/include/gtest/gtest.h ]; then
  [ -d "$debs" ] || { echo "error: scripts/gpu_check.sh: no GoogleTest here and no $debs/ (run --fetch on the dev machine)" >&2; exit 2; }
  mkdir -p "$prefix"
  for d in "$debs"/*.deb; do dpkg -x "$d" "$prefix"; done
  cmake_args+=(-DGTest_ROOT="$prefix/usr" -DCMAKE_PREFIX_PATH="$prefix/usr")
fi

stage "build (sm_90)"
cuda_tests=$(for f in tests/cuda/*_test.cpp; do basename "$f" .cpp; done)
targets=(llm-bench $cuda_tests)
upper_summary=()
cmake -S . -B build-gpu "${cmake_args[@]}" >>"$log" 2>&1 || { echo "error: cmake failed (see $log)"; tail -20 "$log"; exit 1; }
target_list=$(cmake --build build-gpu --target help 2>/dev/null)
has_target() { grep -q " $1\$" <<<"$target_list"; }
has_target nccl_test && targets+=(nccl_test)
# llm-train on the GPU under mpirun also needs the upper layers' libraries (yaml-cpp, HDF5 ...).
train_e2e=0
if has_target nccl_test && has_target llm-train && has_target llm-data && has_target dist_compare_runs; then
  train_e2e=1
  targets+=(llm-train llm-data dist_compare_runs)
fi
# Generation on the GPU end to end needs the model readers and tokenizers (the -dev packages): it
# runs where those build and is reported as not built elsewhere.
upper_tests=""
for t in generate_cuda_test; do
  if has_target "$t"; then targets+=("$t"); upper_tests+=" $t"
  else upper_summary+=("$(printf "%-26s not built (needs the -dev packages)" "$t")"); fi
done
if ! cmake --build build-gpu -j "$(nproc)" --target "${targets[@]}" >>"$log" 2>&1; then
  echo "error: build failed (see $log):"; grep -E "error" "$log" | head -20; exit 1
fi

# The tensor-core kernels must really issue tensor-core instructions (HMMA in the SASS).
hmma=$(cuobjdump -sass build-gpu/kernels/libllm_kernels_cuda.a 2>>"$log" | grep -c HMMA || true); hgmma=$(cuobjdump -sass build-gpu/kernels/libllm_kernels_cuda.a 2>>"$log" | grep -c HGMMA || true)

# run_test NAME COMMAND...: runs a GoogleTest executable into the log; prints its one summary line.
run_test() {
  local name=$1; shift
  echo "--- $name" >>"$log"
  timeout 300 "$@" --gtest_color=no >"$log.part" 2>&1
  local rc=$?
  cat "$log.part" >>"$log"
  local passed failed skipped
  passed=$(grep -oE "^\[  PASSED  \] [0-9]+" "$log.part" | grep -oE "[0-9]+$" || echo 0)
  failed=$(grep -E "^\[  FAILED  \] [A-Za-z_0-9./]+" "$log.part" | grep -v "listed below" | sed 's/^\[  FAILED  \] //' | sort -u | tr '\n' ' ')
  skipped=$(grep -oE "^\[  SKIPPED \] [0-9]+" "$log.part" | grep -oE "[0-9]+$" || echo 0)
  printf "%-26s passed %3s  skipped %2s  rc %3s  %s" "$name" "${passed:-0}" "$skipped" "$rc" "${failed:+FAILED: $failed}"
}

stage "CUDA tests"
summary=("${upper_summary[@]}")
for t in $cuda_tests $upper_tests; do
  summary+=("$(run_test "$t" "build-gpu/tests/$t")")
done
rm -f "$log.part"

stage "benchmarks (llm-bench cuda)"
timeout 300 build-gpu/tools/llm-bench cuda >"$log.bench" 2>&1
cat "$log.bench" >>"$log"

# The NCCL communicator end to end with world size 1 (it bootstraps over MPI, so it is built only
# where an MPI library is installed: Debian's libopenmpi-dev openmpi-bin): its collectives, and GPU
# training with DataParallel and with ZeRO-1 over it against plain GPU training, step for step.
stage "NCCL under mpirun -np 1"
nccl="not built (no MPI library on this machine)"
if [ -x build-gpu/tests/nccl_test ] && command -v mpirun >/dev/null; then
  mpi=(mpirun --allow-run-as-root --oversubscribe -np 1)
  nccl=$(run_test nccl_test "${mpi[@]}" build-gpu/tests/nccl_test)
  # How close DataParallel and ZeRO-1 came to plain training (0 = bit for bit).
  closeness=$(grep -E "^(DataParallel|ZeRO-1): largest" "$log.part" | tr '\n' ' ')
  [ -n "$closeness" ] && nccl="$nccl
  $closeness"
  rm -f "$log.part"
  "${mpi[@]}" build-gpu/tools/llm-bench allreduce --backend nccl >>"$log" 2>&1 || nccl="$nccl; allreduce bench failed"
  if [ "$train_e2e" = 1 ]; then
    echo "--- tests/dist/gpu_train.sh" >>"$log"
    timeout 300 sh tests/dist/gpu_train.sh build-gpu/tools/llm-data build-gpu/tools/llm-train \
      build-gpu/tests/dist_compare_runs "$PWD" >>"$log" 2>&1 && nccl="$nccl
  llm-train on cuda under mpirun -np 1 (plain, ZeRO-1, ZeRO-1 resumed) = one process: passed" || nccl="$nccl
  llm-train on cuda under mpirun -np 1 (plain, ZeRO-1, ZeRO-1 resumed) = one process: FAILED (see the log)"
  else
    nccl="$nccl
  llm-train under mpirun: not built here (the upper layers' libraries are missing)"
  fi
fi

stage "done; full log: $log"
echo
echo "CUDA tests:"
printf '  %s\n' "${summary[@]}"
echo "NCCL: $nccl"
echo "HMMA instructions in libllm_kernels_cuda.a: ${hmma:-cuobjdump failed}, HGMMA (wgmma): ${hgmma:-cuobjdump failed}"
echo
cat "$log.bench"
rm -f "$log.bench"
