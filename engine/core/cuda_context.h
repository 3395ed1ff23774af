// The process's CUDA state (built only with CUDA): one stream per device that every CUDA op, copy
// and optimizer step is queued on, so work is ordered without synchronizing, and the caching
// allocator may hand a freed block to the next op at once (it runs after the last use on the
// stream). The stream is a blocking one: it also orders against work on the legacy default stream
// (cudaMemset in tests, the NCCL communicator's inputs-ready event).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "engine/core/dtype.h"

namespace llm::cuda_context {

// The stream of cuda:device (created on first use; makes device current).
cudaStream_t stream(int device);
inline cudaStream_t stream(Device device) { return stream(device.index); }

// Waits until everything queued on the device's stream has finished (errors surface here).
void synchronize(int device);

// Host ↔ device copies through a pinned staging buffer: host to device returns once the data is
// staged (the copy itself runs on the stream); device to host waits for the stream and the copy.
void copy_to_device(void* dst, int device, const void* src, size_t nbytes);
void copy_to_host(void* dst, const void* src, int device, size_t nbytes);
// Device to device on the stream (across devices through the host).
void copy_device_to_device(void* dst, int dst_device, const void* src, int src_device, size_t nbytes);

}  // namespace llm::cuda_context
