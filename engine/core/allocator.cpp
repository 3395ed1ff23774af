#include "engine/core/allocator.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/core/error.h"

namespace llm {

size_t CachingAllocator::round_size(size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  if (nbytes <= 4096) return (nbytes + 63) / 64 * 64;
  size_t pow2 = 4096;
  while (pow2 * 2 <= nbytes && pow2 * 2 > pow2) pow2 *= 2;
  const size_t step = pow2 / 8;
  return (nbytes + step - 1) / step * step;
}

CachingAllocator::~CachingAllocator() { release_cached(); }

void* CachingAllocator::allocate(size_t nbytes) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* p = nullptr;
  auto it = free_blocks_.find(size);
  if (it != free_blocks_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    stats_.bytes_cached -= size;
    stats_.cache_hits++;
  } else {
    p = raw_alloc_(size, device_);
    if (!p && stats_.bytes_cached > 0) {  // out of memory: return the cache to the system and retry
      for (auto& [block_size, blocks] : free_blocks_)
        for (void* b : blocks) raw_free_(b, device_);
      free_blocks_.clear();
      stats_.bytes_cached = 0;
      p = raw_alloc_(size, device_);
    }
    LLM_CHECK(p, "out of memory: could not allocate ", size, " bytes on ",
              device_ < 0 ? std::string("cpu") : "cuda:" + std::to_string(device_), " (",
              stats_.bytes_in_use, " bytes in use)");
    stats_.system_allocs++;
  }
  stats_.bytes_in_use += size;
  if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
  return p;
}

void CachingAllocator::deallocate(void* p, size_t nbytes) {
  if (!p) return;
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mutex_);
  free_blocks_[size].push_back(p);
  stats_.bytes_in_use -= size;
  stats_.bytes_cached += size;
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [size, blocks] : free_blocks_)
    for (void* b : blocks) raw_free_(b, device_);
  free_blocks_.clear();
  stats_.bytes_cached = 0;
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

namespace {
void* cpu_alloc(size_t nbytes, int) { return std::aligned_alloc(kCpuAlignment, nbytes); }
void cpu_free(void* p, int) { std::free(p); }
}  // namespace

// CUDA allocation lives in device_cuda.cpp; without CUDA these report that it is missing.
CachingAllocator& cuda_allocator(int device);

CachingAllocator& allocator_for(Device device) {
  if (device.is_cpu()) {
    static CachingAllocator* cpu = new CachingAllocator(cpu_alloc, cpu_free, -1);  // lives until exit
    return *cpu;
  }
  return cuda_allocator(device.index);
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = allocator_for(device).allocate(nbytes);
}

Storage::Storage(void* data, size_t nbytes, Device device, std::shared_ptr<void> keep_alive)
    : data_(data), nbytes_(nbytes), device_(device), keep_alive_(std::move(keep_alive)) {}

Storage::~Storage() {
  if (!keep_alive_) allocator_for(device_).deallocate(data_, nbytes_);
}

}  // namespace llm
