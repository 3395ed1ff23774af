// The emulator's state and checks. "Device" memory is host memory it tracks, so every copy and
// kernel can check that a pointer it is given is device memory and that its whole extent lies inside
// one allocation; streams and events are tracked handles. A violation is a bug in the caller: it
// aborts at once with the function and argument named (a test then fails with that message).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace llm::cuda_emulator {

// Allocates nbytes (0xFF-filled: NaN for float and bf16) and tracks it; release() untracks and frees.
void* allocate(size_t nbytes);
// False (and nothing freed) when p is not the start of a tracked allocation.
bool release(void* p);

// Whether p lies inside a tracked allocation.
bool is_device(const void* p);

// Aborts, naming `function` and `argument`, unless [p, p + nbytes) lies inside one tracked
// allocation. nbytes == 0 checks nothing (an empty extent may be any pointer).
void require_device(const void* p, size_t nbytes, const char* function, const char* argument);
// Aborts unless [p, p + nbytes) touches no tracked allocation (a host pointer).
void require_host(const void* p, size_t nbytes, const char* function, const char* argument);

// Streams: created, destroyed, and checked where used (the legacy and per-thread default streams
// are always valid). Work runs synchronously, so a stream only has to exist.
cudaStream_t create_stream();
bool destroy_stream(cudaStream_t stream);
void require_stream(cudaStream_t stream, const char* function);

// Prints "cuda emulator: <function>: <message>" and aborts.
[[noreturn]] void fail(const char* function, const char* message);

// The element counts kernels pass, as byte extents; negative counts abort.
size_t bytes_of(int64_t count, size_t elem_size, const char* function, const char* argument);

}  // namespace llm::cuda_emulator
