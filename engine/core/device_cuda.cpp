// The CUDA half of allocator.h: device memory and copies. Without CUDA every entry point says so.
#include <cstring>
#include <map>
#include <mutex>

#include "engine/core/allocator.h"
#include "engine/core/error.h"

#ifdef LLM_HAVE_CUDA
#include <cuda_runtime.h>

#include "engine/core/cuda_context.h"
#endif

namespace llm {

#ifdef LLM_HAVE_CUDA
namespace {
void check_cuda(cudaError_t err, const char* what) {
  LLM_CHECK(err == cudaSuccess, "CUDA error in ", what, ": ", cudaGetErrorString(err));
}
void* cuda_alloc(size_t nbytes, int device) {
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  void* p = nullptr;
  if (cudaMalloc(&p, nbytes) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky out-of-memory error; the caller reports it
    return nullptr;
  }
  return p;
}
void cuda_free(void* p, int device) {
  cudaSetDevice(device);
  cudaFree(p);
}
}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

CachingAllocator& cuda_allocator(int device) {
  static std::mutex mutex;
  static auto* allocators = new std::map<int, CachingAllocator*>();  // lives until exit
  std::lock_guard<std::mutex> lock(mutex);
  auto it = allocators->find(device);
  if (it != allocators->end()) return *it->second;
  LLM_CHECK(device >= 0 && device < cuda_device_count(), "cuda:", device, " is not available (",
            cuda_device_count(), " CUDA devices visible)");
  auto* a = new CachingAllocator(cuda_alloc, cuda_free, device);
  (*allocators)[device] = a;
  return *a;
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) std::memcpy(dst, src, nbytes);
  else if (dst_device.is_cpu()) cuda_context::copy_to_host(dst, src, src_device.index, nbytes);
  else if (src_device.is_cpu()) cuda_context::copy_to_device(dst, dst_device.index, src, nbytes);
  else cuda_context::copy_device_to_device(dst, dst_device.index, src, src_device.index, nbytes);
}

#else

int cuda_device_count() { return 0; }

CachingAllocator& cuda_allocator(int device) {
  throw Error(detail::concat("cuda:", device, " requested, but this build has no CUDA backend "
                             "(configure with -DLLM_CUDA=ON on a machine with nvcc)"));
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  LLM_CHECK(dst_device.is_cpu() && src_device.is_cpu(), "copy to or from CUDA memory, but this build has no CUDA backend");
  if (nbytes) std::memcpy(dst, src, nbytes);
}

#endif

}  // namespace llm
