// Memory for tensors. A caching allocator keeps freed blocks in size classes and hands them out
// again, so a training step that repeats the same shapes allocates from the system only once.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/core/dtype.h"

namespace llm {

constexpr size_t kCpuAlignment = 64;  // a cache line, and one AVX-512 register

struct AllocatorStats {
  uint64_t system_allocs = 0;  // blocks obtained from the system (malloc / cudaMalloc)
  uint64_t cache_hits = 0;     // requests served from the cache
  size_t bytes_in_use = 0;     // handed out and not yet returned (rounded sizes)
  size_t bytes_cached = 0;     // returned and kept for reuse
  size_t peak_bytes_in_use = 0;
};

class CachingAllocator {
 public:
  using RawAlloc = void* (*)(size_t nbytes, int device);
  using RawFree = void (*)(void* p, int device);
  CachingAllocator(RawAlloc alloc, RawFree free, int device) : raw_alloc_(alloc), raw_free_(free), device_(device) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t nbytes);          // never null: throws llm::Error when memory runs out
  void deallocate(void* p, size_t nbytes);  // nbytes as passed to allocate
  void release_cached();                  // give every cached block back to the system
  AllocatorStats stats() const;

  // The size class a request is rounded up to: multiples of 64 bytes up to 4 KiB, then steps of
  // 1/8 of the power of two below (at most 12.5% waste).
  static size_t round_size(size_t nbytes);

 private:
  RawAlloc raw_alloc_;
  RawFree raw_free_;
  int device_;
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_blocks_;
  AllocatorStats stats_;
};

// The allocator for a device: the CPU one always exists; CUDA ones exist when built with CUDA.
CachingAllocator& allocator_for(Device device);

// Copies nbytes between any two devices (CPU↔CPU, CPU↔CUDA, CUDA↔CUDA). CUDA copies run on the
// device's stream (engine/core/cuda_context.h): a copy to the host waits for the work queued before
// it; a copy to a device returns once the source is staged.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

// CUDA devices visible to this process (0 when built without CUDA or without a GPU).
int cuda_device_count();

// Reference-counted memory block with a version counter bumped by in-place writes, so autograd can
// tell that a tensor it saved was modified afterwards.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  // Memory owned elsewhere (e.g. a memory-mapped file); `release` runs when the storage dies.
  Storage(void* data, size_t nbytes, Device device, std::shared_ptr<void> keep_alive);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  uint64_t version() const { return version_; }
  void bump_version() { ++version_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  uint64_t version_ = 0;
  std::shared_ptr<void> keep_alive_;  // set for external memory; null when the allocator owns it
};

}  // namespace llm
