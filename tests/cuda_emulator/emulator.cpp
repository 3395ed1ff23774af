#include "tests/cuda_emulator/emulator.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>

namespace llm::cuda_emulator {
namespace {

constexpr size_t kAlignment = 256;  // what cudaMalloc guarantees

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
// base address -> size in bytes. Lives until exit: allocations may be freed by static destructors.
std::map<uintptr_t, size_t>& registry() {
  static auto* r = new std::map<uintptr_t, size_t>();
  return *r;
}

// The allocation containing address a, or registry().end(). Caller holds the mutex.
std::map<uintptr_t, size_t>::const_iterator find_containing(uintptr_t a) {
  const auto& r = registry();
  auto it = r.upper_bound(a);
  if (it == r.begin()) return r.end();
  --it;
  return a < it->first + it->second ? it : r.end();
}

std::string describe(const void* p, size_t nbytes) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%p, %zu bytes", p, nbytes);
  return buf;
}

}  // namespace

}  // namespace llm::cuda_emulator

// The runtime's opaque stream type, defined here: each stream is a distinct tracked object.
struct CUstream_st {
  int unused = 0;
};

namespace llm::cuda_emulator {
namespace {
std::set<cudaStream_t>& streams() {  // guarded by registry_mutex()
  static auto* s = new std::set<cudaStream_t>();
  return *s;
}
}  // namespace

cudaStream_t create_stream() {
  auto* s = new CUstream_st();
  std::lock_guard<std::mutex> lock(registry_mutex());
  streams().insert(s);
  return s;
}

bool destroy_stream(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    if (streams().erase(stream) == 0) return false;
  }
  delete stream;
  return true;
}

void require_stream(cudaStream_t stream, const char* function) {
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread) return;
  std::lock_guard<std::mutex> lock(registry_mutex());
  if (!streams().count(stream)) fail(function, "the stream argument is not a live stream (destroyed, or never created)");
}

void fail(const char* function, const char* message) {
  std::fprintf(stderr, "cuda emulator: %s: %s\n", function, message);
  std::fflush(stderr);
  std::abort();
}

void* allocate(size_t nbytes) {
  const size_t rounded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded ? rounded : kAlignment);
  if (!p) return nullptr;
  std::memset(p, 0xFF, rounded);
  std::lock_guard<std::mutex> lock(registry_mutex());
  // The tracked extent is what was asked for: a kernel touching the rounding slack is out of range.
  registry()[reinterpret_cast<uintptr_t>(p)] = nbytes ? nbytes : 1;
  return p;
}

bool release(void* p) {
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    if (registry().erase(reinterpret_cast<uintptr_t>(p)) == 0) return false;
  }
  std::free(p);
  return true;
}

bool is_device(const void* p) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  return find_containing(reinterpret_cast<uintptr_t>(p)) != registry().end();
}

void require_device(const void* p, size_t nbytes, const char* function, const char* argument) {
  if (nbytes == 0) return;
  std::lock_guard<std::mutex> lock(registry_mutex());
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const auto it = find_containing(a);
  if (it == registry().end()) {
    fail(function, (std::string(argument) + " (" + describe(p, nbytes) + ") is not device memory").c_str());
  }
  if (nbytes > it->first + it->second - a) {
    fail(function, (std::string(argument) + " (" + describe(p, nbytes) + ") runs past the end of its device allocation (" +
                    describe(reinterpret_cast<const void*>(it->first), it->second) + ")")
                       .c_str());
  }
}

void require_host(const void* p, size_t nbytes, const char* function, const char* argument) {
  if (nbytes == 0) return;
  std::lock_guard<std::mutex> lock(registry_mutex());
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const auto& r = registry();
  auto it = r.lower_bound(a + nbytes);  // the first allocation starting at or after the extent's end
  const bool overlaps = it != r.begin() && (--it, it->first + it->second > a);
  if (overlaps) fail(function, (std::string(argument) + " (" + describe(p, nbytes) + ") is device memory, a host pointer was expected").c_str());
}

size_t bytes_of(int64_t count, size_t elem_size, const char* function, const char* argument) {
  if (count < 0) fail(function, (std::string(argument) + ": negative element count " + std::to_string(count)).c_str());
  return static_cast<size_t>(count) * elem_size;
}

}  // namespace llm::cuda_emulator
