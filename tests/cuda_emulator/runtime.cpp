// The CUDA runtime functions the engine and its tests call, with the signatures of
// cuda_runtime_api.h (included, so the compiler holds us to them). One device; work runs on the
// calling thread when it is queued, so streams and events are bookkeeping and synchronizing is free.
// Misuse that the real runtime might let pass silently (a host pointer given as device memory, a
// copy in the wrong direction or past an allocation's end, a dead stream or event) aborts.
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

#include "tests/cuda_emulator/emulator.h"

namespace emu = llm::cuda_emulator;

struct CUevent_st {
  int unused = 0;
};

namespace {

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t report(cudaError_t err) {
  if (err != cudaSuccess) last_error = err;
  return err;
}

std::mutex& handles_mutex() {
  static std::mutex m;
  return m;
}
std::set<cudaEvent_t>& events() {  // guarded by handles_mutex()
  static auto* e = new std::set<cudaEvent_t>();
  return *e;
}
std::set<void*>& pinned() {  // cudaMallocHost blocks, guarded by handles_mutex()
  static auto* p = new std::set<void*>();
  return *p;
}

void require_event(cudaEvent_t event, const char* function) {
  std::lock_guard<std::mutex> lock(handles_mutex());
  if (!events().count(event)) emu::fail(function, "the event argument is not a live event (destroyed, or never created)");
}

void require_device_index(int device, const char* function) {
  if (device != 0) emu::fail(function, "the emulator has one device, cuda:0");
}

// Checks that dst and src are where `kind` says they are, with count bytes each.
void check_copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* function) {
  if (kind == cudaMemcpyDefault) {
    kind = emu::is_device(dst) ? (emu::is_device(src) ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                               : (emu::is_device(src) ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  switch (kind) {
    case cudaMemcpyHostToDevice:
      emu::require_device(dst, count, function, "dst (host to device)");
      emu::require_host(src, count, function, "src (host to device)");
      break;
    case cudaMemcpyDeviceToHost:
      emu::require_host(dst, count, function, "dst (device to host)");
      emu::require_device(src, count, function, "src (device to host)");
      break;
    case cudaMemcpyDeviceToDevice:
      emu::require_device(dst, count, function, "dst (device to device)");
      emu::require_device(src, count, function, "src (device to device)");
      break;
    case cudaMemcpyHostToHost:
      emu::require_host(dst, count, function, "dst (host to host)");
      emu::require_host(src, count, function, "src (host to host)");
      break;
    default: emu::fail(function, "unknown cudaMemcpyKind");
  }
  if (count && static_cast<const char*>(src) < static_cast<char*>(dst) + count &&
      static_cast<char*>(dst) < static_cast<const char*>(src) + count) {
    emu::fail(function, "src and dst overlap");
  }
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  require_device_index(device, "cudaSetDevice");
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  require_device_index(device, "cudaGetDeviceProperties");
  std::memset(prop, 0, sizeof *prop);
  std::strncpy(prop->name, "CUDA emulator (CPU)", sizeof prop->name - 1);
  prop->major = 9;  // reports the H200's sm_90, the architecture the kernels are built for
  prop->minor = 0;
  prop->multiProcessorCount = 1;
  prop->totalGlobalMem = size_t(16) << 30;
  prop->warpSize = 32;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// The stream-ordered pool: the emulated kernels take no scratch memory, so only its settings exist.
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  require_device_index(device, "cudaDeviceGetDefaultMemPool");
  static int default_pool;
  *pool = reinterpret_cast<cudaMemPool_t>(&default_pool);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }

cudaError_t cudaGetLastError() {
  const cudaError_t err = last_error;
  last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() { return last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNotReady: return "device not ready";
    default: return "unknown error (cuda emulator)";
  }
}

// ---- memory ----------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** ptr, size_t size) {
  *ptr = emu::allocate(size);
  return *ptr ? cudaSuccess : report(cudaErrorMemoryAllocation);
}

cudaError_t cudaFree(void* ptr) {
  if (ptr && !emu::release(ptr)) emu::fail("cudaFree", "the pointer is not the start of a live device allocation");
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = std::malloc(size ? size : 1);
  if (!*ptr) return report(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(handles_mutex());
  pinned().insert(*ptr);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (!ptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(handles_mutex());
    if (pinned().erase(ptr) == 0) emu::fail("cudaFreeHost", "the pointer did not come from cudaMallocHost");
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  check_copy(dst, src, count, kind, "cudaMemcpy");
  if (count) std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  emu::require_stream(stream, "cudaMemcpyAsync");
  check_copy(dst, src, count, kind, "cudaMemcpyAsync");
  if (count) std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  emu::require_device(ptr, count, "cudaMemset", "devPtr");
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  emu::require_stream(stream, "cudaMemsetAsync");
  emu::require_device(ptr, count, "cudaMemsetAsync", "devPtr");
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}

// ---- streams and events ----------------------------------------------------------------------

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = emu::create_stream();
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) { return cudaStreamCreate(stream); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!emu::destroy_stream(stream)) emu::fail("cudaStreamDestroy", "the stream is not a live stream");
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  emu::require_stream(stream, "cudaStreamSynchronize");
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  emu::require_stream(stream, "cudaStreamWaitEvent");
  require_event(event, "cudaStreamWaitEvent");
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st();
  std::lock_guard<std::mutex> lock(handles_mutex());
  events().insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  {
    std::lock_guard<std::mutex> lock(handles_mutex());
    if (events().erase(event) == 0) emu::fail("cudaEventDestroy", "the event is not a live event");
  }
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  emu::require_stream(stream, "cudaEventRecord");
  require_event(event, "cudaEventRecord");
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  require_event(event, "cudaEventSynchronize");
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  require_event(event, "cudaEventQuery");
  return cudaSuccess;
}

// No timing: the work between two events took no device time.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  require_event(start, "cudaEventElapsedTime");
  require_event(end, "cudaEventElapsedTime");
  *ms = 0.f;
  return cudaSuccess;
}
