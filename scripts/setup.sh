#!/usr/bin/env bash
# Installs the Debian packages the build and tests need (only those missing), then configures and
# builds into build/ (or build-asan/ with --sanitize, build-cuda-emu/ with --cuda-emulator: the CUDA
# code paths against the CPU emulation in tests/cuda_emulator). Idempotent and non-interactive.
#   scripts/setup.sh [--sanitize | --cuda-emulator] [--no-install] [--target=NAME ...] [extra cmake -D options...]
# --target=NAME (repeatable) builds only those targets instead of everything.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
emulator=0
install=1
cmake_args=()
targets=()
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    --cuda-emulator) emulator=1 ;;
    --no-install) install=0 ;;
    --target=?*) targets+=(--target "${arg#--target=}") ;;
    -D*) cmake_args+=("$arg") ;;
    *) echo "error: scripts/setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

# Each package and its job (the README lists the same):
packages=(
  g++              # C++17 compiler with OpenMP (libgomp)
  cmake            # build system
  make             # build driver
  libgtest-dev     # GoogleTest: the test suite
  libhdf5-dev      # llm_io: HDF5 token shards and checkpoints
  libpcre2-dev     # llm_data: tokenizer pre-split regexes
  libsentencepiece-dev  # llm_data: SentencePiece tokenizer.model (LLaMA family)
  nlohmann-json3-dev    # llm_io, llm_data: config.json, tokenizer.json, JSONL and meta.json parsing
  libyaml-cpp-dev  # llm_train: YAML training recipes (configs/)
  pkg-config       # finds PCRE2 and cpp-httplib at configure time
  libcpp-httplib-dev    # llm_serve: llm-serve's HTTP server (and its tests' HTTP client)
  libopenblas-dev  # benchmark comparison only (llm-bench kernels); the engine never links it
  libopenmpi-dev   # llm_dist: the MPI communicator (data-parallel training across processes)
  openmpi-bin      # mpirun: launches the ranks; the dist tests run under it
)
if [ "$install" = 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

build_dir=build
if [ "$sanitize" = 1 ]; then
  build_dir=build-asan
  # Debug-level optimisation keeps sanitizer reports readable and the build quick.
  cmake_args+=(-DLLM_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLM_CUDA=OFF)
fi
if [ "$emulator" = 1 ]; then
  [ "$sanitize" = 0 ] || { echo "error: scripts/setup.sh: --sanitize and --cuda-emulator are separate builds" >&2; exit 2; }
  build_dir=build-cuda-emu
  cmake_args+=(-DLLM_CUDA_EMULATOR=ON)
fi
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B "$build_dir" "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j "$jobs" "${targets[@]}"
echo "setup: built into $build_dir/"
