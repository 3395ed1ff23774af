// LLM_HOST_DEVICE marks a small function that the CPU and the CUDA kernels share (one definition of
// a formula for both backends): __host__ __device__ under nvcc, plain inline elsewhere.
#pragma once

#if defined(__CUDACC__)
#define LLM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LLM_HOST_DEVICE inline
#endif
