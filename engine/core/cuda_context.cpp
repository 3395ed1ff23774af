// One stream per device and pinned staging buffers for host transfers (see cuda_context.h).
#ifdef LLM_HAVE_CUDA
#include "engine/core/cuda_context.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "engine/core/error.h"

namespace llm::cuda_context {

namespace {
void check(cudaError_t err, const char* what) {
  LLM_CHECK(err == cudaSuccess, "CUDA error in ", what, ": ", cudaGetErrorString(err));
}

// Transfers larger than this go through the staging buffer in pieces.
constexpr size_t kStagingBytes = size_t(64) << 20;

struct DeviceState {
  cudaStream_t stream = nullptr;
  void* staging = nullptr;             // pinned host memory, kStagingBytes
  cudaEvent_t staging_free = nullptr;  // recorded after the last copy that read `staging`
  std::mutex staging_mutex;
};

// Created on first use and kept until exit (streams and pinned memory die with the process).
DeviceState& state(int device) {
  static std::mutex mutex;
  static auto* states = new std::map<int, DeviceState*>();
  std::lock_guard<std::mutex> lock(mutex);
  check(cudaSetDevice(device), "cudaSetDevice");
  auto it = states->find(device);
  if (it != states->end()) return *it->second;
  auto* s = new DeviceState();
  check(cudaStreamCreate(&s->stream), "cudaStreamCreate");
  // Kernel scratch (norm and bias gradients, the gradient norm, split decode attention) comes from
  // cudaMallocAsync's pool; by default the pool hands memory back to the driver at every
  // synchronization, which would make each training step allocate again. Keep it cached instead.
  cudaMemPool_t pool;
  check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
  uint64_t keep_all = UINT64_MAX;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all), "cudaMemPoolSetAttribute");
  check(cudaEventCreateWithFlags(&s->staging_free, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaEventRecord(s->staging_free, s->stream), "cudaEventRecord");
  (*states)[device] = s;
  return *s;
}

void ensure_staging(DeviceState& s) {
  if (!s.staging) check(cudaMallocHost(&s.staging, kStagingBytes), "cudaMallocHost (pinned staging buffer)");
}
}  // namespace

cudaStream_t stream(int device) { return state(device).stream; }

void synchronize(int device) { check(cudaStreamSynchronize(state(device).stream), "a CUDA kernel (stream synchronize)"); }

void copy_to_device(void* dst, int device, const void* src, size_t nbytes) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.staging_mutex);
  ensure_staging(s);
  for (size_t done = 0; done < nbytes; done += kStagingBytes) {
    const size_t piece = std::min(kStagingBytes, nbytes - done);
    check(cudaEventSynchronize(s.staging_free), "cudaEventSynchronize (staging buffer)");  // the previous copy read it
    std::memcpy(s.staging, static_cast<const char*>(src) + done, piece);
    check(cudaMemcpyAsync(static_cast<char*>(dst) + done, s.staging, piece, cudaMemcpyHostToDevice, s.stream),
          "cudaMemcpyAsync (host to device)");
    check(cudaEventRecord(s.staging_free, s.stream), "cudaEventRecord");
  }
}

void copy_to_host(void* dst, const void* src, int device, size_t nbytes) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(s.staging_mutex);
  ensure_staging(s);
  for (size_t done = 0; done < nbytes; done += kStagingBytes) {
    const size_t piece = std::min(kStagingBytes, nbytes - done);
    check(cudaMemcpyAsync(s.staging, static_cast<const char*>(src) + done, piece, cudaMemcpyDeviceToHost, s.stream),
          "cudaMemcpyAsync (device to host)");
    check(cudaStreamSynchronize(s.stream), "a CUDA kernel or the copy to the host (stream synchronize)");
    std::memcpy(static_cast<char*>(dst) + done, s.staging, piece);
  }
  check(cudaEventRecord(s.staging_free, s.stream), "cudaEventRecord");
}

void copy_device_to_device(void* dst, int dst_device, const void* src, int src_device, size_t nbytes) {
  if (dst_device == src_device) {
    check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream(dst_device)), "cudaMemcpyAsync (device to device)");
    return;
  }
  std::vector<char> host(nbytes);
  copy_to_host(host.data(), src, src_device, nbytes);
  copy_to_device(dst, dst_device, host.data(), nbytes);
}

}  // namespace llm::cuda_context
#endif
