#!/usr/bin/env bash
# The GPU check, for the bare, offline GPU machine (CUDA toolkit, CMake, a compiler; no -dev packages).
#   here, once:       scripts/gpu_check.sh --fetch      downloads the Debian packages the check needs
#                                                       into gpu-debs/ (about 22 MB; carry it along)
#   on the GPU box:   scripts/gpu_check.sh [LOG]        unpacks them into a local prefix, builds for sm_90a,
#                                                       runs every CUDA test, the GPU benchmarks and the
#                                                       NCCL communicator and GPU data-parallel training
#                                                       under mpirun -np 1
# The full log goes to LOG (or $GPU_CHECK_LOG, default gpu-check.log); the terminal gets one line per
# stage and, last, the short table: test results and the benchmark rows.
# A second, narrower run (the build directory is kept, so it rebuilds only what changed):
#   GPU_CHECK_TESTS="cuda_gemm_test fused_test"   only these test programs
#   GPU_CHECK_FILTER='*Gemm*'                      their --gtest_filter
#   GPU_CHECK_SKIP="bench nccl"                    stages left out (preflight, bench, nccl)
#   GPU_CHECK_BENCH="attention train"              only these sections of llm-bench cuda (gemm,
#                                                  attention, attention_cached, fused, train)
#   GPU_CHECK_SANITIZER=racecheck                  the tests under compute-sanitizer --tool racecheck
#                                                  (memcheck, synccheck, initcheck); slow: filter them
#   LLM_CUDA_TMA=0 / LLM_CUDA_WGMMA=0              (the engine's own switches) the wgmma kernels without
#                                                  their TMA forms / the mma.sync kernels only: to tell
#                                                  which kernel a failure or a hang belongs to
#   LLM_CUDA_EXCLUDE="gemm_tma attention_tma"      kernels treated as absent (the preflight stage adds
#                                                  those whose self-check fails alone)
set -uo pipefail
cd "$(dirname "$0")/.."
debs=gpu-debs

# The packages the upper layers build and run with, and their shared libraries' dependencies, less
# what every Linux with a C++ compiler has (libc, libstdc++, libgcc, zlib). Debian 12 (bookworm).
carried_packages=(
  libgtest-dev                                   # the test suite (static libraries and headers)
  libhdf5-dev libhdf5-103-1 libsz2 libaec0       # llm_io: HDF5 shards and checkpoints
  libcurl4 libssl3 libnghttp2-14 libidn2-0 libunistring2 librtmp1 libgnutls30 libhogweed6 libnettle8
  libgmp10 libp11-kit0 libffi8 libtasn1-6 libssh2-1 libpsl5 libgssapi-krb5-2 libkrb5-3 libk5crypto3
  libkrb5support0 libcom-err2 libkeyutils1 libldap-2.5-0 libsasl2-2 libsasl2-modules-db libzstd1
  libbrotli1                                     # ... libhdf5's own dependencies (through libcurl)
  nlohmann-json3-dev                             # llm_io, llm_data: JSON
  libyaml-cpp-dev libyaml-cpp0.7                 # llm_train: YAML recipes
  libpcre2-dev libpcre2-8-0                      # llm_data: tokenizer regexes
  libsentencepiece-dev libsentencepiece0         # llm_data: SentencePiece
  pkg-config pkgconf pkgconf-bin libpkgconf3     # finds PCRE2 (llm-serve, which the check does not need, is left out)
  libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common  # llm_dist: MPI (NCCL's bootstrap), mpirun
  libhwloc15 libudev1 libevent-core-2.1-7 libevent-pthreads-2.1-7 libpmix2 libmunge2 libfabric1
  libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libucx0 libnuma1
  libatomic1 libuuid1                            # ... Open MPI's own dependencies
)

if [ "${1:-}" = "--fetch" ]; then
  rm -rf "$debs" && mkdir -p "$debs"
  if ! (cd "$debs" && apt-get download "${carried_packages[@]}" >/dev/null 2>download.log); then
    cat "$debs/download.log" >&2; echo "error: scripts/gpu_check.sh: apt-get download failed" >&2; exit 1
  fi
  rm -f "$debs/download.log"
  echo "$(ls "$debs" | wc -l) packages, $(du -sh "$debs" | cut -f1) in $debs/"
  exit 0
fi

log=$(realpath -m "${1:-${GPU_CHECK_LOG:-gpu-check.log}}")
: >"$log"
start=$SECONDS
stage() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$log"; }

stage machine
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not available"
  nvcc --version | tail -1; echo "$(nproc) CPU cores"; } >>"$log" 2>&1

cmake_args=(-DCMAKE_BUILD_TYPE=Release -DLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a)
# Unpack the carried packages into a local prefix (never into /) and point CMake, the linker, the
# loader and Open MPI at it. What the machine has itself is used where the packages are absent.
if [ -d "$debs" ]; then
  prefix="$PWD/.gpu-prefix"
  rm -rf "$prefix" && mkdir -p "$prefix"
  for d in "$debs"/*.deb; do
    if command -v dpkg >/dev/null; then dpkg -x "$d" "$prefix"
    else ar p "$d" data.tar.xz | tar -xJ -C "$prefix"  # no dpkg: a .deb is an ar archive
    fi || echo "warning: could not unpack $d" >>"$log"
  done
  usr="$prefix/usr"
  libdir="$usr/lib/x86_64-linux-gnu"
  carried_libs="$libdir:$libdir/openmpi/lib:$libdir/hdf5/serial:$prefix/lib/x86_64-linux-gnu"
  # The carried programs run through wrappers that give them the carried libraries (the build's own
  # tools, cmake and the compilers, keep the machine's), and Open MPI its relocated prefix.
  mkdir -p "$prefix/bin"
  for tool in pkgconf:pkg-config mpicxx.openmpi:mpicxx orterun:mpirun; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
      "$carried_libs" "$usr/bin/${tool%%:*}" >"$prefix/bin/${tool#*:}"
    chmod +x "$prefix/bin/${tool#*:}"
  done
  cmake_args+=(-DCMAKE_PREFIX_PATH="$usr" -DGTest_ROOT="$usr" -DPKG_CONFIG_EXECUTABLE="$prefix/bin/pkg-config"
               -DHDF5_C_INCLUDE_DIR="$usr/include/hdf5/serial"
               -DMPI_CXX_COMPILER="$prefix/bin/mpicxx" -DMPIEXEC_EXECUTABLE="$prefix/bin/mpirun")
  export PKG_CONFIG_PATH="$libdir/pkgconfig:$usr/share/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$prefix"
  export PATH="$prefix/bin:$PATH"
  export OPAL_PREFIX="$usr"        # Open MPI finds its components and help files under it,
  export PMIX_MCA_mca_base_component_path="$libdir/pmix2/lib/pmix"  # and PMIx its components here
  export OMPI_MCA_plm=isolated     # mpirun -np 1 starts the process itself (there may be no ssh)
elif ! [ -f /usr/include/gtest/gtest.h ]; then
  echo "error: scripts/gpu_check.sh: no GoogleTest here and no $debs/ (run --fetch on the dev machine)" >&2; exit 2
fi
# NCCL: the toolkit's copy, else the one PyTorch's pip packages bring (nvidia-nccl).
if ! [ -f /usr/local/cuda/include/nccl.h ] && ! [ -f /usr/include/nccl.h ]; then
  nccl_dir=$(python3 -c "import nvidia.nccl as n; print(list(n.__path__)[0])" 2>/dev/null)
  if [ -n "$nccl_dir" ] && [ -f "$nccl_dir/include/nccl.h" ]; then
    cmake_args+=(-DNCCL_INCLUDE_DIR="$nccl_dir/include" -DNCCL_LIBRARY="$(ls "$nccl_dir"/lib/libnccl.so* | head -1)")
    carried_libs="${carried_libs:+$carried_libs:}$nccl_dir/lib"
  fi
fi
# The linker resolves the carried libraries' own dependencies there. Nothing runs with the carried
# libraries during the build (the compilers keep the machine's): the test programs are listed at
# test time, not right after linking, and LD_LIBRARY_PATH names them only once the build is done.
[ -n "${carried_libs:-}" ] && cmake_args+=("-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$carried_libs"
                                          -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST)

stage "build (sm_90a)"
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

[ -n "${carried_libs:-}" ] && export LD_LIBRARY_PATH="$carried_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The tensor-core kernels must really issue tensor-core instructions (HMMA in the SASS).
sass=$(command -v cuobjdump >/dev/null && cuobjdump -sass build-gpu/kernels/libllm_kernels_cuda.a 2>>"$log")
hmma=$([ -n "$sass" ] && grep -c HMMA <<<"$sass"); hgmma=$([ -n "$sass" ] && grep -c HGMMA <<<"$sass")

# run_test NAME COMMAND...: runs a GoogleTest executable into the log; prints its one summary line.
# Each program gets 120 s (GPU_CHECK_TEST_TIMEOUT; rc 124 in the table): a hung kernel must not eat
# the whole 8-minute budget.
run_test() {
  local name=$1; shift
  echo "--- $name" >>"$log"
  timeout "${GPU_CHECK_TEST_TIMEOUT:-120}" "$@" --gtest_color=no ${GPU_CHECK_FILTER:+--gtest_filter="$GPU_CHECK_FILTER"} >"$log.part" 2>&1
  local rc=$?
  cat "$log.part" >>"$log"
  local passed failed skipped
  passed=$(grep -oE "^\[  PASSED  \] [0-9]+" "$log.part" | grep -oE "[0-9]+$" || echo 0)
  failed=$(grep -E "^\[  FAILED  \] [A-Za-z_0-9./]+" "$log.part" | grep -v "listed below" | sed 's/^\[  FAILED  \] //' | sort -u | tr '\n' ' ')
  skipped=$(grep -oE "^\[  SKIPPED \] [0-9]+" "$log.part" | grep -oE "[0-9]+$" || echo 0)
  printf "%-26s passed %3s  skipped %2s  rc %3s  %s" "$name" "${passed:-0}" "$skipped" "$rc" "${failed:+FAILED: $failed}"
}

skipped() { [[ " ${GPU_CHECK_SKIP:-} " == *" $1 "* ]]; }
sanitizer=()
[ -n "${GPU_CHECK_SANITIZER:-}" ] && sanitizer=(compute-sanitizer --tool "$GPU_CHECK_SANITIZER" --error-exitcode 99)

# Preflight: each Hopper kernel's self-check in a process of its own, before anything else runs it. A
# kernel that faults poisons its process's CUDA context, so every later test or benchmark in that
# process would fail with it (and one bad kernel would cost the whole table). A kernel that fails
# here, by a wrong result, a crash or a timeout, is excluded from the rest of the run through
# LLM_CUDA_EXCLUDE (kernels/cuda/gemm.h): the tests skip it visibly, the engine and llm-bench pass it
# by, and its line below says what happened. Order matters: a TMA form is tried after its cp.async
# form passed, so a failure points at the form that changed.
preflight=()
preflight_kernel() {  # NAME PROGRAM FILTER [ENV=VALUE...]: runs the program's self-check test
  local name=$1 program=build-gpu/tests/$2 filter=$3; shift 3
  [ -x "$program" ] || return 0
  echo "--- preflight $name" >>"$log"
  (env LLM_CUDA_EXCLUDE="${LLM_CUDA_EXCLUDE:-}" "$@" timeout 60 "$program" --gtest_color=no --gtest_filter="$filter"
   exit $?) >>"$log" 2>&1  # a subshell of its own, so that a crash's "Segmentation fault" goes to the log
  local rc=$?
  [ $rc = 0 ] && return 0
  local why="failed"
  [ $rc = 124 ] && why="timed out"
  [ $rc -gt 128 ] && why="crashed (signal $((rc - 128)))"
  export LLM_CUDA_EXCLUDE="${LLM_CUDA_EXCLUDE:+$LLM_CUDA_EXCLUDE }$name"
  preflight+=("$(printf "%-26s %s (rc %s): excluded from the rest of the run (LLM_CUDA_EXCLUDE)" "$name" "$why" "$rc")")
}
if ! skipped preflight; then
  stage "preflight: each Hopper kernel's self-check alone"
  # (NativeNtOnEveryKernel also runs the mma.sync kernel: the log tells which of the two failed.)
  preflight_kernel gemm_wgmma cuda_gemm_test CudaGemm.NativeNtOnEveryKernel \
    LLM_CUDA_EXCLUDE="${LLM_CUDA_EXCLUDE:-} gemm_tma"
  preflight_kernel gemm_tma cuda_gemm_test CudaGemm.WgmmaTmaPassesItsSelfCheck
  preflight_kernel attention_wgmma cuda_attention_test CudaAttention.WgmmaForwardPassesItsSelfCheck \
    LLM_CUDA_EXCLUDE="${LLM_CUDA_EXCLUDE:-} attention_tma"
  preflight_kernel attention_tma cuda_attention_test CudaAttention.WgmmaForwardPassesItsSelfCheck
  preflight_kernel attention_bwd_wgmma cuda_attention_test CudaAttention.WgmmaBackwardPassesItsSelfCheck
  [ ${#preflight[@]} = 0 ] && preflight=("every Hopper kernel passed its self-check alone (or none runs here)")
fi

stage "CUDA tests${GPU_CHECK_SANITIZER:+ under compute-sanitizer --tool $GPU_CHECK_SANITIZER}"
summary=("${upper_summary[@]}")
for t in ${GPU_CHECK_TESTS:-$cuda_tests $upper_tests}; do
  summary+=("$(run_test "$t" "${sanitizer[@]}" "build-gpu/tests/$t")")
done
rm -f "$log.part"

: >"$log.bench"
if ! skipped bench; then
  stage "benchmarks (llm-bench cuda)"
  # Each section in a process of its own: a kernel that faults poisons its process's CUDA context,
  # and would take the sections after it along. The device line is printed once.
  first=1
  for section in ${GPU_CHECK_BENCH:-$(build-gpu/tools/llm-bench cuda --list)}; do
    (timeout 150 build-gpu/tools/llm-bench cuda "$section"; exit $?) >"$log.section" 2>&1
    rc=$?
    [ $first = 1 ] && cat "$log.section" || tail -n +2 "$log.section"
    [ $rc = 0 ] || echo "$section: llm-bench exited with status $rc"
    first=0
  done >"$log.bench"
  rm -f "$log.section"
  cat "$log.bench" >>"$log"
fi

# The NCCL communicator end to end with world size 1 (it bootstraps over MPI, so it is built only
# where an MPI library is installed: Debian's libopenmpi-dev openmpi-bin): its collectives, and GPU
# training with DataParallel and with ZeRO-1 over it against plain GPU training, step for step.
nccl="not built (no MPI library on this machine)"
skipped nccl && nccl="skipped (GPU_CHECK_SKIP)"
if ! skipped nccl && [ -x build-gpu/tests/nccl_test ] && command -v mpirun >/dev/null; then
  stage "NCCL under mpirun -np 1"
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
    timeout 180 sh tests/dist/gpu_train.sh build-gpu/tools/llm-data build-gpu/tools/llm-train \
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
[ ${#preflight[@]} -gt 0 ] && { echo "Preflight:"; printf '  %s\n' "${preflight[@]}"; }
echo "CUDA tests:"
printf '  %s\n' "${summary[@]}"
echo "NCCL: $nccl"
echo "HMMA instructions in libllm_kernels_cuda.a: ${hmma:-not counted (no cuobjdump)}, HGMMA (wgmma): ${hgmma:-not counted}"
echo
cat "$log.bench"
rm -f "$log.bench"
