#!/usr/bin/env bash
# Runs setup (install + build), then the whole test suite under ctest.
#   scripts/test.sh                  release build in build/
#   scripts/test.sh --sanitize       AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/
#   scripts/test.sh --cuda-emulator  the engine's CUDA host code on the CPU emulation of the CUDA runtime
#                                    and kernels (tests/cuda_emulator) in build-cuda-emu/: only the tests
#                                    that run tensors on Device::cuda are built and run
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
setup_args=()
ctest_args=()
for arg in "$@"; do
  case "$arg" in
    --sanitize) build_dir=build-asan; setup_args+=(--sanitize) ;;
    --cuda-emulator)
      build_dir=build-cuda-emu
      # Only these targets are built (the rest would be the CPU suite again), and only their tests run.
      targets=(emulator_test ops_cuda_test train_cuda_test cuda_kv_cache_test generate_cuda_test tensor_test
               device_config_test llm-train llm-data)
      setup_args+=(--cuda-emulator "${targets[@]/#/--target=}")
      ctest_args+=(-R '^(CudaEmulator|OpsCuda|TrainCuda|CudaKVCache|GenerateCuda|Tensor|DeviceConfig)\.|^llm_train_cuda_emulated$') ;;
    *) echo "error: scripts/test.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

scripts/setup.sh "${setup_args[@]}"
if [ "$build_dir" = build-asan ]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi
jobs=$(nproc 2>/dev/null || echo 2)
cd "$build_dir"
ctest --output-on-failure -j "$jobs" "${ctest_args[@]}"
